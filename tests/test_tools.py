"""Function calling: tool definitions, parsing every Gemma call style, grammar-constrained calls."""

from __future__ import annotations

import json

import pytest

from edge_runtime import GenerationSettings
from edge_runtime.chat import ChatSession
from edge_runtime.errors import ToolCallError
from edge_runtime.tools import (
    Tool,
    ToolCall,
    gemma3_format_call,
    gemma4_format_call,
    parse_gemma4_calls,
    parse_tool_calls,
    tool_call_grammar,
)

WEATHER = Tool.from_dict({
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city"]},
    },
})
TIME = Tool("get_time", "Current time in a timezone", {"type": "object", "properties": {"tz": {"type": "string"}}})


@pytest.mark.parametrize(
    "text",
    [
        '[get_weather(city="Paris", days=2)]',
        'Sure.\n```tool_code\nget_weather(city="Paris", days=2)\n```',
        '{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}',
        '```json\n{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}\n```',
        'get_weather(city="Paris", days=2)',
    ],
)
def test_gemma3_call_styles(text):
    assert parse_tool_calls(text, [WEATHER, TIME]) == [ToolCall("get_weather", {"city": "Paris", "days": 2})]


def test_several_calls_and_unknown_names():
    calls = parse_tool_calls('[get_weather(city="Oslo"), get_time(tz="CET")]', [WEATHER, TIME])
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert parse_tool_calls('[launch_rocket(now=True)]', [WEATHER]) == []
    assert parse_tool_calls("The weather is nice today.", [WEATHER]) == []


def test_gemma4_native_calls_round_trip():
    call = ToolCall("get_weather", {"city": "São Paulo, BR", "days": 3, "metric": True, "tags": ["a", "b"], "opts": {"x": 1.5}})
    text = "<|channel>thought\n<channel|>" + gemma4_format_call(call) + gemma4_format_call(ToolCall("get_time", {}))
    assert parse_tool_calls(text) == [call, ToolCall("get_time", {})]
    with pytest.raises(ToolCallError, match="malformed"):
        parse_gemma4_calls('<|tool_call>call:get_weather{city:<|"|>Paris')


def test_call_formatting_for_history():
    assert gemma3_format_call([ToolCall("get_weather", {"city": "Paris", "ok": True})]) == "[get_weather(city='Paris', ok=True)]"


def test_bad_tool_definitions():
    with pytest.raises(ToolCallError, match="name"):
        Tool.from_dict({"function": {"description": "no name"}})
    with pytest.raises(ToolCallError, match="not a valid identifier"):
        Tool("get weather")
    with pytest.raises(ToolCallError, match="type 'object'"):
        Tool("f", parameters={"type": "string"})
    with pytest.raises(ToolCallError, match="at least one tool"):
        tool_call_grammar([])


def test_grammar_constrained_tool_call_on_the_real_model(model):
    grammar = tool_call_grammar([WEATHER, TIME])
    result = model.generate(
        "User: What's the weather in Paris for the next 2 days?\nCall:",
        GenerationSettings(temperature=0, max_tokens=64, grammar=grammar),
    )
    payload = json.loads(result.text)
    assert payload["name"] in ("get_weather", "get_time")
    calls = parse_tool_calls(result.text, [WEATHER, TIME])
    assert len(calls) == 1 and calls[0].name == payload["name"]


def test_chat_with_tools_returns_calls_and_accepts_results(model):
    model.reset()
    chat = ChatSession(model, "You can call functions.", tools=[WEATHER, TIME],
                       settings=GenerationSettings(temperature=0, max_tokens=48))
    prompt_text = chat.format.render(chat.window_messages + [], tools=chat.tools)
    assert "get_weather" in prompt_text and "You have access to functions" in prompt_text
    result = chat.send("What's the weather in Paris?", settings=chat.settings.replace(grammar=tool_call_grammar([WEATHER]))).consume()
    assert result.tool_calls and result.tool_calls[0].name == "get_weather"
    chat.add_tool_result("get_weather", json.dumps({"temperature": 21}))
    follow_up = chat.ask(None)
    assert follow_up.finish_reason in ("stop", "length")
    assert "```tool_output" in chat.format.render(chat.window_messages, tools=chat.tools)
