"""Built-in Gemma chat formats agree with Google's own templates (rendered by Jinja)."""

from __future__ import annotations

import pytest

from edge_runtime.chat_format import ChatFormat, Gemma4Format, GemmaFormat, JinjaFormat, Message
from edge_runtime.errors import InvalidArgumentError
from edge_runtime.tools import Tool, ToolCall

from conftest import DATA

CONVERSATION = [
    Message("system", "You are a helpful assistant."),
    Message("user", "  Hello there!  "),
    Message("assistant", "Hi! How can I help?"),
    Message("user", "What is the weather in Paris?"),
]
WEATHER = Tool(
    "get_weather",
    "Current weather for a city",
    {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                      "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]},
)


@pytest.fixture(scope="module")
def gemma2_template():
    return JinjaFormat((DATA / "google-gemma-2-2b-it.jinja").read_text(), fallback=GemmaFormat())


@pytest.fixture(scope="module")
def gemma4_template():
    return JinjaFormat((DATA / "google-gemma-4-31B-it.jinja").read_text(), fallback=Gemma4Format())


def test_gemma_builtin_matches_official_template(gemma2_template):
    # The official Gemma 2 template refuses a system role; both fold it into the first user turn.
    for convo in (CONVERSATION, CONVERSATION[1:], CONVERSATION[:2]):
        assert GemmaFormat().render(convo) == gemma2_template.render(convo)
        assert GemmaFormat().render(convo, add_generation_prompt=False) == gemma2_template.render(convo, add_generation_prompt=False)
    text = GemmaFormat().render(CONVERSATION)
    assert text.startswith("<start_of_turn>user\nYou are a helpful assistant.\n\nHello there!<end_of_turn>\n")
    assert text.endswith("<start_of_turn>model\n")


def test_gemma4_builtin_matches_official_template(gemma4_template):
    for convo in (CONVERSATION, CONVERSATION[1:], CONVERSATION[:2]):
        assert Gemma4Format().render(convo) == gemma4_template.render(convo)
    assert Gemma4Format().render(CONVERSATION).startswith("<|turn>system\nYou are a helpful assistant.<turn|>\n<|turn>user\nHello there!<turn|>\n")


def test_gemma4_tools_match_official_template(gemma4_template):
    convo = [Message("user", "Weather in Paris?")]
    assert Gemma4Format().render(convo, tools=[WEATHER]) == gemma4_template.render(convo, tools=[WEATHER])
    called = convo + [
        Message("assistant", "", tool_calls=[ToolCall("get_weather", {"city": "Paris", "unit": "c"})]),
        Message("tool", '{"temperature": 21, "sky": "clear"}', name="get_weather"),
    ]
    ours = Gemma4Format().render(called, tools=[WEATHER])
    assert "<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>,unit:<|\"|>c<|\"|>}<tool_call|>" in ours
    assert "<|tool_response>response:get_weather{sky:<|\"|>clear<|\"|>,temperature:21}<tool_response|>" in ours
    assert ours.endswith("<tool_response|>")  # the model continues its own turn


def test_format_choice():
    assert isinstance(ChatFormat.for_model("gemma3", None), GemmaFormat)
    assert isinstance(ChatFormat.for_model("gemma3n", None), GemmaFormat)
    assert isinstance(ChatFormat.for_model("gemma4", None), Gemma4Format)
    fmt = ChatFormat.for_model("gemma2", "{{ messages[0]['content'] }}")
    assert isinstance(fmt, JinjaFormat) and fmt.end_of_turn == "<end_of_turn>"


def test_bad_messages_and_templates():
    with pytest.raises(InvalidArgumentError, match="role"):
        Message("narrator", "hi")
    with pytest.raises(InvalidArgumentError, match="not valid Jinja"):
        JinjaFormat("{% for %}", fallback=GemmaFormat())
    refusing = JinjaFormat("{{ raise_exception('no tools here') }}", fallback=GemmaFormat())
    with pytest.raises(InvalidArgumentError, match="no tools here"):
        refusing.render([Message("user", "x")])
