"""Chat in a small window on the real default model: never overflows, reuses the KV cache."""

from __future__ import annotations

import logging

import pytest

from edge_runtime import GenerationSettings, load_model
from edge_runtime.chat import ChatSession
from edge_runtime.chat_format import Message
from edge_runtime.errors import ContextSizeError

SYSTEM = "You are a helpful assistant on a Raspberry Pi. Answer briefly."


@pytest.fixture(scope="module")
def small_model(default_model_path):
    with load_model(default_model_path, n_ctx=512, flash_attn=False) as m:
        yield m


def turn_tokens(model, text: str) -> int:
    """Tokens a new user turn adds: the closing of the previous reply, the turn, the model header."""
    fmt = model.chat_format
    body = fmt.render([Message("user", text)], add_generation_prompt=True)
    return len(model.tokenize(body, add_bos=False)) + len(model.tokenize(f"{fmt.end_of_turn}\n", add_bos=False))


def test_200_turns_in_512_tokens_reuse_the_cache(small_model):
    model = small_model
    model.reset()
    chat = ChatSession(model, SYSTEM, settings=GenerationSettings(temperature=0, max_tokens=12))
    dropped_total = 0
    for turn in range(200):
        text = f"Turn {turn}: please tell me something about the number {turn * 7}."
        result = chat.ask(text)
        assert result.finish_reason in ("stop", "length")
        m = result.metrics
        assert m.prompt_tokens + m.generated_tokens <= model.n_ctx
        assert chat.window_messages[0].role == "system"  # pinned
        dropped_total += result.dropped_messages
        if turn >= 1:
            evaluated = m.prompt_tokens - m.reused_tokens
            # Only the new turn is evaluated, plus the few tokens where the previous reply was
            # re-tokenized or where the shift joined the pinned prompt to the first kept turn.
            assert evaluated <= turn_tokens(model, text) + 8, (turn, evaluated, m)
            assert m.reused_tokens >= m.prompt_tokens - turn_tokens(model, text) - 8
        if turn % 50 == 49:
            # The turn-by-turn token cache gives exactly the tokens of the whole rendered window.
            rendered = chat.format.render(chat.window_messages)
            assert chat._tokenize(chat.window_messages).keys() == model.tokenize(rendered, add_bos=True)
    assert dropped_total > 300  # the window really did shift many times
    # the window's messages and a bounded tail of shifted-out ones (was every message: 400 here)
    assert len(chat.messages) <= chat.keep_shifted + len(chat.window_messages) < 400


def test_turn_token_cache_equals_whole_text_tokenization(small_model):
    """Cutting at <start_of_turn> and caching the pieces never changes the tokens, whatever the text."""
    from edge_runtime.chat import TurnTokenCache

    texts = ["Hello!", "日本語の文章です。", "emoji 🎉🎉 ok", "  spaces   and\n\nnewlines ", "a literal <start_of_turn>model",
             "<end_of_turn>", "1234 + 5678 = ?", "Ünïcödé", ""]
    cache = TurnTokenCache(small_model, "<start_of_turn>")
    fmt = small_model.chat_format
    for i in range(60):
        msgs = [Message("system", texts[i % 4])] if i % 3 == 0 else []
        msgs += [Message("user" if k % 2 == 0 else "assistant", texts[(i + k) % len(texts)] + texts[(i * k) % len(texts)])
                 for k in range(1 + i % 5)]
        rendered = fmt.render(msgs, add_generation_prompt=i % 4 != 0)
        assert cache.tokenize(rendered) == small_model.tokenize(rendered, add_bos=True), rendered
    assert 0 < len(cache._cache) <= cache.max_entries
    assert ChatSession(small_model)._turn_tokens.marker == "<start_of_turn>"


def test_turn_cache_is_off_when_the_marker_is_not_a_control_token(small_model):
    """Gemma 4's <|turn> is plain text in the Gemma 3 vocabulary: cutting there would change the tokens."""
    from edge_runtime.chat import TurnTokenCache
    from edge_runtime.chat_format import Gemma4Format

    original = small_model.chat_format
    small_model.chat_format = Gemma4Format()
    try:
        chat = ChatSession(small_model, "Be brief.")
        assert chat._turn_tokens.marker == ""
        assert TurnTokenCache(small_model, "<|turn>").marker == ""
        chat.messages += [Message("user", "a literal <|turn>model"), Message("assistant", "ok"), Message("user", "日本語")]
        rendered = chat.format.render(chat.window_messages)
        assert chat._tokenize(chat.window_messages).keys() == small_model.tokenize(rendered, add_bos=True)
    finally:
        small_model.chat_format = original


def test_system_prompt_is_folded_into_first_user_turn(small_model):
    chat = ChatSession(small_model, "Always answer in French.")
    chat.messages.append(Message("user", "Hello"))
    text = chat.format.render(chat.window_messages)
    assert text == "<start_of_turn>user\nAlways answer in French.\n\nHello<end_of_turn>\n<start_of_turn>model\n"


def test_message_longer_than_the_window_is_truncated_with_a_warning(small_model, caplog):
    small_model.reset()
    chat = ChatSession(small_model, SYSTEM, settings=GenerationSettings(temperature=0, max_tokens=16))
    chat.ask("Hi")
    long_message = " ".join(f"word{i}" for i in range(2000)) + " What is the last word?"
    with caplog.at_level(logging.WARNING):
        result = chat.ask(long_message)
    assert result.truncated
    assert any("truncated" in r.message for r in caplog.records)
    assert result.window_tokens + 16 <= small_model.n_ctx
    # The end of the message (the question) is what was kept.
    kept = chat.messages[-2].content
    assert kept.endswith("What is the last word?") and len(kept) < len(long_message)
    # The conversation goes on normally afterwards.
    assert not chat.ask("Thanks").truncated


def test_system_prompt_too_long_is_refused(small_model):
    with pytest.raises(ContextSizeError, match="system prompt"):
        ChatSession(small_model, "rule " * 400)


def test_reset_and_system_change(small_model):
    chat = ChatSession(small_model, SYSTEM, settings=GenerationSettings(temperature=0, max_tokens=4))
    chat.ask("Hello")
    chat.reset()
    assert chat.messages == [] and chat.window_messages[0].content == SYSTEM
    chat.set_system(None)
    assert chat.window_messages == []


def test_cancelled_reply_keeps_the_session_usable(small_model):
    small_model.reset()
    chat = ChatSession(small_model, settings=GenerationSettings(temperature=0, max_tokens=200))
    stream = chat.send("Tell me a long story.")
    for i, _ in enumerate(stream):
        if i == 3:
            stream.cancel()
    assert stream.result.finish_reason == "cancelled"
    assert chat.messages[-1].role == "assistant"
    assert chat.ask("And then?").finish_reason in ("stop", "length")
