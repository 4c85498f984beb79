"""Streaming generation on the real default model through the real llama.cpp."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from edge_runtime import CancelToken, GenerationSettings, load_model
from edge_runtime.errors import ContextSizeError, InvalidArgumentError
from edge_runtime.text_stream import IncrementalDetokenizer, StopMatcher

GREEDY = GenerationSettings(temperature=0, max_tokens=48)
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_llama_cpp_python(default_model_path, model, prompt):
    from llama_cpp import Llama

    ref = Llama(
        model_path=str(default_model_path), n_ctx=2048, n_batch=512, n_ubatch=512,
        n_threads=model.settings.n_threads, n_threads_batch=model.settings.n_threads_batch,
        flash_attn=False, verbose=False,
    )
    try:
        expected = ref.create_completion(prompt, max_tokens=48, temperature=0.0, top_k=1)["choices"][0]["text"]
    finally:
        ref.close()
    model.reset()  # same starting state as the fresh reference (KV cell placement affects float rounding)
    result = model.generate(prompt, GREEDY)
    assert result.text == expected
    assert result.metrics.generated_tokens == 48 and result.finish_reason == "length"


def test_stream_pieces_join_to_result_and_metrics(model):
    stream = model.stream("The capital of France is", GREEDY)
    pieces = list(stream)
    result = stream.result
    assert "".join(pieces) == result.text and len(pieces) > 10
    m = result.metrics
    assert m.prompt_tokens == len(model.tokenize("The capital of France is"))
    assert m.generated_tokens == 48 and m.ttft_s > 0 and m.gen_tps > 0 and m.peak_rss_mb > 50
    assert set(m.as_dict()) == {"prompt_tokens", "reused_tokens", "generated_tokens", "ttft_s", "prompt_tps", "gen_tps",
                                "peak_rss_mb", "media_encode_s"}
    assert m.media_encode_s == 0.0


def test_second_call_reuses_the_prompt_prefix(model):
    model.reset()
    first = model.generate("The capital of France is", GREEDY)
    second = model.generate("The capital of France is", GREEDY)
    n = first.metrics.prompt_tokens
    assert first.metrics.reused_tokens == 0
    assert second.metrics.reused_tokens == n - 1  # the last prompt token is re-evaluated for its logits
    assert second.text == first.text


def test_utf8_stream_with_cjk_and_emoji(model):
    text = "東京の天気は晴れ 🌸🎉 naïve café — 你好世界 👩‍💻 rare: 𠀋𡈽 🫨🪿 ꙮ"
    tokens = model.tokenize(text, add_bos=False, special=False)
    pieces_bytes = [model.llama.token_to_piece(t) for t in tokens]
    # The vocabulary must split at least one character across tokens for this test to mean anything.
    assert any(not _is_complete_utf8(b) for b in pieces_bytes)
    detok = IncrementalDetokenizer(model.llama.token_to_piece)
    pieces = [detok.feed(t) for t in tokens] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)

    stream = model.stream("日本の首都は東京です。中国の首都は", GREEDY.replace(max_tokens=24))
    out = list(stream)
    assert all("\ufffd" not in p for p in out)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in "".join(out))


def _is_complete_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_stop_strings_are_not_emitted(model):
    full = model.generate("The capital of France is", GREEDY).text
    assert "country of France" in full
    result = model.generate("The capital of France is", GREEDY.replace(stop=("France",)))
    assert result.finish_reason == "stop"
    assert result.text == full[: full.index("France")]
    # A stop string spanning several tokens, and one that never appears.
    result = model.generate("The capital of France is", GREEDY.replace(stop=("country of Fr", "zzzz")))
    assert result.text == full[: full.index("country of Fr")]


def test_stop_matcher_holds_back_partial_matches():
    m = StopMatcher(["<end>"])
    assert m.feed("Hello <e") == "Hello "
    assert m.feed("nd") == ""
    assert m.feed("> tail") == "" and m.stopped
    m = StopMatcher(["<end>"])
    assert m.feed("a <e") == "a "
    assert m.feed("x") == "<ex"
    assert m.flush() == ""


def test_cancel_from_another_thread_mid_stream(model):
    expected = model.generate("Once upon a time", GREEDY.replace(max_tokens=16)).text
    cancel = CancelToken()
    stream = model.stream("Write a very long story about a dragon.", GREEDY.replace(max_tokens=5000), cancel=cancel)
    got = []

    def consume():
        for piece in stream:
            got.append(piece)

    worker = threading.Thread(target=consume)
    worker.start()
    while not got:
        time.sleep(0.01)
    cancel.cancel()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert stream.result.finish_reason == "cancelled"
    assert stream.result.metrics.generated_tokens < 5000
    # The model is still usable and gives the same answer as before.
    assert model.generate("Once upon a time", GREEDY.replace(max_tokens=16)).text == expected


def test_cancel_during_prompt_evaluation(model):
    expected = model.generate("The capital of France is", GREEDY.replace(max_tokens=12)).text
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 150  # ~1500 tokens
    cancel = CancelToken()
    stream = model.stream(long_prompt, GREEDY, cancel=cancel)
    timer = threading.Timer(0.05, cancel.cancel)
    timer.start()
    result = stream.consume()
    timer.join()
    assert result.finish_reason == "cancelled"
    # What the aborted decode left in memory is consistent with what the cache believes.
    cache = model.generator.cache
    assert len(cache.tokens) == model.ctx.pos_max() + 1
    assert model.generate("The capital of France is", GREEDY.replace(max_tokens=12)).text == expected


def test_async_iterator(model):
    async def run():
        return [p async for p in model.astream("The capital of France is", GREEDY.replace(max_tokens=12))]

    pieces = asyncio.run(run())
    assert "".join(pieces) == model.generate("The capital of France is", GREEDY.replace(max_tokens=12)).text


def test_seeded_sampling_is_reproducible(model):
    s = GenerationSettings(temperature=1.0, seed=1234, max_tokens=24)

    def fresh(settings):
        # From the same cache state: re-evaluating one token instead of a batch rounds differently.
        model.reset()
        return model.generate("My favourite animal is", settings).text

    a, b, c = fresh(s), fresh(s), fresh(s.replace(seed=99))
    assert a == b
    assert a != c


def test_json_grammar_constrains_output(model):
    import json

    from edge_runtime.tools import json_schema_grammar

    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"]}
    result = model.generate("The largest city in France:", GREEDY.replace(max_tokens=64, grammar=json_schema_grammar(schema)))
    data = json.loads(result.text)
    assert set(data) == {"city", "population"} and isinstance(data["population"], int)


def test_bad_generation_arguments(model):
    with pytest.raises(InvalidArgumentError, match="temperature"):
        model.generate("x", temperature=-1)
    with pytest.raises(InvalidArgumentError, match="empty"):
        model.generate([])
    with pytest.raises(InvalidArgumentError, match="grammar"):
        model.generate("x", grammar="root ::= (((")
    with pytest.raises(ContextSizeError, match=r"takes 3002 tokens but the context holds 2048.*--ctx 3328"):
        model.generate("word " * 3000)


def test_swa_cache_rollback_is_never_stale(default_model_path):
    """With a small sliding-window cache, rolling back past it must re-process, not reuse stale cells."""
    long_text = " ".join(f"item{i}" for i in range(430))
    settings = GREEDY.replace(max_tokens=16)
    with load_model(default_model_path, n_ctx=2048, n_ubatch=64, n_batch=64, swa_full=False, flash_attn=False) as m:
        tokens = m.tokenize(long_text)
        assert len(tokens) > 1500
        m.generate(tokens, settings)
        rollback = tokens[:700] + m.tokenize(" The end. Summary:", add_bos=False)
        result = m.generate(rollback, settings)
        assert m.generator.last_reuse.reset_reason is not None
        assert result.metrics.reused_tokens == 0
        with load_model(default_model_path, n_ctx=2048, n_ubatch=64, n_batch=64, swa_full=False, flash_attn=False) as fresh:
            assert fresh.generate(rollback, settings).text == result.text


def test_stop_tokens_end_the_reply_unemitted(model):
    full = model.generate("The capital of France is", GREEDY)
    stop_at = full.tokens[5]
    result = model.generate("The capital of France is", GREEDY.replace(stop_tokens=(stop_at,)))
    assert result.finish_reason == "stop"
    assert result.tokens == full.tokens[: full.tokens.index(stop_at)]
    assert result.text == model.detokenize(result.tokens)


def test_detokenization_cost_does_not_grow_with_output(model, monkeypatch):
    """Each generated token is turned into bytes exactly once: no re-detokenizing the whole output."""
    calls = []
    real = model.llama.token_to_piece

    def counting(token, **kw):
        calls.append(token)
        return real(token, **kw)

    monkeypatch.setattr(model.llama, "token_to_piece", counting)
    result = model.generate("Once upon a time", GREEDY.replace(max_tokens=200))
    assert result.metrics.generated_tokens == 200
    assert calls == result.tokens


def test_closing_the_stream_early_cancels_and_keeps_the_cache_consistent(model):
    expected = model.generate("The capital of France is", GREEDY.replace(max_tokens=12)).text
    with model.stream("Once upon a time", GREEDY) as stream:
        for i, _ in enumerate(stream):
            if i == 3:
                break
    assert stream.result.finish_reason == "cancelled"
    assert len(model.generator.cache.tokens) == model.ctx.pos_max() + 1
    assert model.generate("The capital of France is", GREEDY.replace(max_tokens=12)).text == expected
