"""Continuous batching (batching/) through the real llama.cpp.

On the real default model batched replies equal one-at-a-time replies or part only at
a near-tie (tests/batch_support.py says why); on tiny Gemma 3 models every sampling step
saw the logits it sees alone, up to rounding.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest

from edge_runtime import CancelToken, GenerationSettings, load_model
from edge_runtime.chat import ChatSession
from edge_runtime.errors import ContextSizeError, GenerationError
from edge_runtime.hardware import CpuInfo, detect_cpu
from edge_runtime.settings import RuntimeSettings, auto_parallel, resolve

from batch_support import check_same_or_near_tie, same_logits, wait_until as _wait

GREEDY = GenerationSettings(temperature=0, max_tokens=32)
TINY_TOL = 5e-3  # batched vs one-at-a-time logits of the tiny f32 Gemma 3 models (about 25)
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


def test_batched_logits_equal_one_at_a_time_on_a_tiny_gemma3(tmp_path_factory, sampled_logits):
    """Every step of every stream saw the logits it sees alone (up to the rounding of batched kernels):
    no cross-talk between sequences, no wrong position, no stale cache. The tiny model's sliding window
    of 8 positions is crossed in every reply; the second round reuses slot prefixes."""
    from convert_support import converted, tiny_checkpoint

    path = converted(tmp_path_factory, tiny_checkpoint(tmp_path_factory, "gemma3"), "f32")
    settings = GREEDY.replace(max_tokens=24)
    prompts = PROMPTS + [p + " again" for p in PROMPTS]
    with load_model(path, parallel=4, n_ctx=256, flash_attn=False) as many, \
            load_model(path, n_ctx=256, flash_attn=False) as one:
        batched = many.generate_many(prompts, settings)
        again = many.generate_many(prompts, settings)
        alone = [one.generate(p, settings) for p in prompts]
        assert many.generator.stats.most_streams == 4
    assert [r.tokens for r in batched] == [r.tokens for r in alone] == [r.tokens for r in again]
    assert sum(r.metrics.reused_tokens for r in again) > len(prompts)
    n = len(prompts)
    same_logits({i: sampled_logits[i] for i in range(n)} | {n + i: sampled_logits[2 * n + i] for i in range(n)},
                n, prompts, TINY_TOL)
    same_logits({i: sampled_logits[n + i] for i in range(n)} | {n + i: sampled_logits[2 * n + i] for i in range(n)},
                n, prompts, TINY_TOL)


def test_images_in_batched_prompts_give_the_logits_of_one_at_a_time(tmp_path_factory, sampled_logits):
    """Gemma 3 images (each evaluated on its own, attending both ways) beside text streams. The tiny
    random model repeats one token whatever the image, so the logits are what is compared: those of
    one at a time up to rounding, and far from another image's."""
    import numpy as np

    from convert_support import converted, tiny_gemma3_vision_checkpoint
    from edge_runtime import Image
    from edge_runtime.conversion.mmproj import convert_mmproj

    ckpt = tiny_gemma3_vision_checkpoint(tmp_path_factory)
    text = converted(tmp_path_factory, ckpt, "f32")
    mmproj = convert_mmproj(ckpt, tmp_path_factory.mktemp("batched_vision") / "mmproj.gguf", "f32", progress=False)
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    prompts = [[f"Picture {i}:", Image(img)] for i, img in enumerate(images)]
    prompts += ["Once upon a time", [Image(images[0]), "Again, picture 0:"], "def fibonacci(n):"]
    settings = GREEDY.replace(max_tokens=12)
    opts = dict(n_ctx=256, flash_attn=False, mmproj=mmproj)
    with load_model(text, parallel=3, **opts) as many, load_model(text, **opts) as one:
        batched = many.generate_many(prompts, settings)
        alone = [one.generate(p, settings) for p in prompts]
        assert many.generator.stats.most_streams == 3 and batched[0].metrics.media_encode_s > 0
    assert [r.tokens for r in batched] == [r.tokens for r in alone]
    assert [r.metrics.prompt_tokens for r in batched] == [r.metrics.prompt_tokens for r in alone]
    same_logits(sampled_logits, len(prompts), prompts, TINY_TOL)
    assert abs(np.array(sampled_logits[0]) - np.array(sampled_logits[1])).max() > 0.05  # the image shows


def test_a_reply_that_fills_its_slot_ends_with_length(batched, single):
    """A slot's window is its n_ctx: the reply stops there, as with one slot (and llama-server without
    --context-shift), and the other streams and the next request go on."""
    prompt = "Once upon a time " * 40
    settings = GenerationSettings(temperature=0, max_tokens=600)  # more than the 512-position window holds
    full, short = batched.generate_many([prompt, "Hello"], settings)
    n_ctx = batched.n_ctx
    assert full.finish_reason == "length"
    # every cell of the window used; the last token sampled needs none
    assert full.metrics.prompt_tokens + full.metrics.generated_tokens == n_ctx + 1
    assert short.finish_reason in ("length", "stop") and short.metrics.generated_tokens > 0
    assert batched.generate("The sky is", GREEDY).metrics.generated_tokens == GREEDY.max_tokens
    alone = single.generate(prompt, settings)
    assert alone.finish_reason == "length"
    assert alone.metrics.prompt_tokens + alone.metrics.generated_tokens == single.n_ctx + 1
