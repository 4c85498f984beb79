"""Continuous batching (batching/) through the real llama.cpp.

On the real default model batched replies equal one-at-a-time replies or part only at
a near-tie (tests/batch_support.py says why); on a tiny Gemma 3 whose kernels do not
depend on the batch they are equal bit for bit.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from edge_runtime import CancelToken, GenerationSettings, load_model
from edge_runtime.chat import ChatSession
from edge_runtime.errors import ContextSizeError, GenerationError
from edge_runtime.hardware import CpuInfo, detect_cpu
from edge_runtime.settings import RuntimeSettings, auto_parallel, resolve

from batch_support import check_same_or_near_tie

GREEDY = GenerationSettings(temperature=0, max_tokens=32)
PROMPTS = [f"The capital of country number {i} is" for i in range(6)] + [
    "Once upon a time", "def fibonacci(n):", "Here is a list of fruits:", "The meaning of life is",
    "In 1969, the first", "My favourite recipe for bread",
]


@pytest.fixture(scope="module")
def batched(default_model_path):
    with load_model(default_model_path, parallel=4, n_ctx=512) as m:
        yield m


@pytest.fixture(scope="module")
def single(default_model_path):
    with load_model(default_model_path, n_ctx=512) as m:
        yield m


def _wait(condition, what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting until {what}"
        time.sleep(0.01)


def test_generate_many_equals_one_at_a_time(batched, single):
    before = dataclasses.replace(batched.generator.stats)
    many = batched.generate_many(PROMPTS, GREEDY)
    ones = [single.generate(p, GREEDY) for p in PROMPTS]
    same = [check_same_or_near_tie(single, p, r.text, o.tokens) for p, r, o in zip(PROMPTS, many, ones)]
    assert sum(same) >= len(PROMPTS) // 2
    assert all(r.finish_reason == "length" and r.metrics.ttft_s > 0 for r in many)
    stats = batched.generator.stats
    assert stats.most_streams == 4  # every slot generating in one step
    generated = sum(len(r.tokens) - 1 for r in many)  # a reply's last token is never evaluated
    assert stats.generated - before.generated == generated
    assert stats.steps - before.steps < generated / 2  # many streams per llama_decode


def test_several_threads_stream_from_one_model(batched, single):
    prompts = PROMPTS[:8]
    out: dict[int, tuple[str, list[int]]] = {}

    def run(i: int) -> None:
        stream = batched.stream(prompts[i], GREEDY)
        text = "".join(stream)
        out[i] = (text, stream.result.tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for i, prompt in enumerate(prompts):
        ref = single.generate(prompt, GREEDY)
        check_same_or_near_tie(single, prompt, out[i][0], ref.tokens)
        assert batched.detokenize(out[i][1]) == out[i][0]


def test_a_long_prompt_is_evaluated_in_chunks_while_others_keep_streaming(batched, single):
    long_prompt = "Here is a long story about a village by the sea. " * 36  # about 440 tokens
    assert 400 < len(batched.tokenize(long_prompt)) < 480
    before = dataclasses.replace(batched.generator.stats)
    running = batched.stream("Once upon a time", GREEDY.replace(max_tokens=120))
    next(running)  # generating
    late = batched.stream(long_prompt, GREEDY.replace(max_tokens=8))
    late_text = "".join(late)
    rest = "".join(running)
    stats = batched.generator.stats
    # 440 prompt tokens in chunks of 256 while the first stream kept its token in every step.
    assert stats.mixed_steps - before.mixed_steps >= 2
    check_same_or_near_tie(single, long_prompt, late_text, single.generate(long_prompt, GREEDY.replace(max_tokens=8)).tokens)
    assert running.result.finish_reason == "length" and len(running.result.tokens) == 120 and rest


def test_a_conversation_returns_to_its_slot_and_reuses_its_history(batched):
    chats = [ChatSession(batched, settings=GREEDY.replace(max_tokens=12)) for _ in range(3)]
    first = [c.ask(f"Tell me about the number {i}.") for i, c in enumerate(chats)]
    # The fourth slot is free: unrelated text goes there, not over a conversation (nor does a
    # conversation's first turn, though it shares the chat template's opening with the others).
    batched.generate_many(["Unrelated text number one"], GREEDY.replace(max_tokens=4))
    for chat, r1 in zip(chats, first):
        r2 = chat.ask("And then?")
        assert r2.metrics.reused_tokens >= r1.window_tokens  # turn 1's prompt was still in its slot
        assert r2.metrics.prompt_tokens - r2.metrics.reused_tokens < 40


def test_cancel_and_early_close_free_the_slot_at_once(batched):
    generator = batched.generator
    _wait(lambda: generator.busy == 0, "idle")
    token = CancelToken()
    stream = batched.stream("Once upon a time", GREEDY.replace(max_tokens=400), cancel=token)
    next(stream)
    assert generator.busy == 1
    token.cancel()
    result = stream.consume()
    assert result.finish_reason == "cancelled" and len(result.tokens) < 400
    _wait(lambda: generator.busy == 0, "the cancelled stream's slot is free")
    stream = batched.stream("Once upon a time", GREEDY.replace(max_tokens=400))
    next(stream)
    stream.close()  # the consumer stops iterating
    _wait(lambda: generator.busy == 0, "the closed stream's slot is free")
    assert stream.result.finish_reason == "cancelled"


def test_requests_beyond_the_slots_wait_and_closing_the_model_fails_them(default_model_path):
    model = load_model(default_model_path, parallel=2, n_ctx=256)
    try:
        streams = [model.stream("Once upon a time", max_tokens=200, temperature=0) for _ in range(3)]
        next(streams[0]), next(streams[1])
        assert model.generator.busy == 2 and model.generator.waiting == 1
        with pytest.raises(ContextSizeError, match="each of the 2 slots holds 256"):
            model.stream("word " * 300)
    finally:
        model.close()
    assert streams[0].consume().finish_reason == "cancelled"
    with pytest.raises(GenerationError, match="closed while this request waited"):
        streams[2].consume()
    with pytest.raises(GenerationError, match="closed"):
        model.generator.stream([2, 3], GREEDY)


def test_reset_and_logits_wait_for_an_idle_engine(batched, single):
    tokens = batched.tokenize("The capital of France is")
    assert abs(batched.logits(tokens) - single.logits(tokens)).max() == 0  # the same kernels: one batch each
    batched.reset()
    assert batched.generator.kv_cells == 0
    assert batched.generate("Once upon a time", GREEDY).metrics.reused_tokens == 0


def test_parallel_is_chosen_from_cores_and_memory():
    cpu = detect_cpu()
    four_cores = dataclasses.replace(cpu, physical_cores=4)
    assert auto_parallel(four_cores, 72.0, 16000)[0] == 8
    assert auto_parallel(dataclasses.replace(cpu, physical_cores=1), 72.0, 16000)[0] == 2
    n, reason = auto_parallel(four_cores, 72.0, 600)  # a quarter of 600 MB holds two 72 MB caches
    assert n == 2 and "free memory" in reason
    assert auto_parallel(four_cores, 4000.0, 600)[0] == 1
    resolved = resolve(RuntimeSettings(parallel=None, n_ctx=1024), trained_ctx=32768, cpu=cpu, kv_mb_per_token=0.0176)
    assert resolved.parallel >= 1 and resolved.context_params().n_ctx == 1024 * resolved.parallel
    assert isinstance(cpu, CpuInfo)
    with pytest.raises(Exception, match="parallel must be from 1 to 256"):
        resolve(RuntimeSettings(parallel=0), trained_ctx=None, cpu=cpu)


def test_batched_equals_one_at_a_time_bit_for_bit_where_the_kernels_allow(tmp_path_factory):
    """A tiny Gemma 3 whose every matrix is a K-quant (widths multiples of 256): llama.cpp then
    uses the same dot products for one row as for a batch, so any difference would be the
    engine's (cross-talk between sequences, wrong positions, a stale cache). Its sliding
    window of 8 positions is crossed in every reply."""
    from convert_support import converted, tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path_factory, "gemma3", hidden_size=256, intermediate_size=512,
                           num_attention_heads=1, head_dim=256, query_pre_attn_scalar=256)
    path = converted(tmp_path_factory, ckpt, "Q4_K_M")
    settings = GREEDY.replace(max_tokens=24)
    # repack off (its Q4_K gemm and gemv differ), flash attention off (it splits one query's cache)
    with load_model(path, parallel=4, n_ctx=256, repack=False, flash_attn=False) as many, \
            load_model(path, n_ctx=256, repack=False, flash_attn=False) as one:
        prompts = PROMPTS + [p + " again" for p in PROMPTS]
        batched = many.generate_many(prompts, settings)
        alone = [one.generate(p, settings) for p in prompts]
        assert [r.tokens for r in batched] == [r.tokens for r in alone]
        assert many.generator.stats.most_streams == 4
        # Second round: every prompt finds a slot holding a related prefix.
        again = many.generate_many(prompts[::-1], settings)
        assert [r.tokens for r in again] == [r.tokens for r in alone[::-1]]
        assert sum(r.metrics.reused_tokens for r in again) > 0
