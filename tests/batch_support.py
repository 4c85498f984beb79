"""Comparing batched replies with one-at-a-time replies on the real default model.

llama.cpp computes a batch of rows with other kernels than a single row (tinyBLAS for
its Q5_0/Q8_0 tensors from two rows up, repacked Q4_K gemm vs gemv, flash attention's
split over the cache for one query, one attention product for every stream of a shared
KV pool): the logits differ by rounding, by up to 0.84 here on steps where both runs still
agree (24 prompts, 16 tokens each, 8 streams). Greedy replies are therefore equal, or part where the one-at-a-time reply stood
at a near-tie. Anything else (another sequence's tokens, wrong positions, a stale
cache) diverges where the model was sure. tests/test_batching.py proves equality bit
for bit on a model whose kernels do not depend on the batch.
"""

from __future__ import annotations

import time

import numpy as np

NEAR_TIE = 1.0  # top-2 logit margin below which rounding may pick either token


def check_same_or_near_tie(reference, prompt: str, got_text: str, want_tokens: list[int]) -> bool:
    """True when `got_text` equals the reply `want_tokens`; when it parts from it, assert the
    reference model stood at a near-tie there. `reference` is a loaded one-slot Model."""
    want_text = reference.detokenize(want_tokens)
    if got_text == want_text:
        return True
    # The text shows the first token i it does not share; the tokens may part one earlier, where
    # the reference's token is the start of a longer one the batched reply took (" " vs " project").
    i = 0
    while i < len(want_tokens) and got_text.startswith(reference.detokenize(want_tokens[: i + 1])):
        i += 1
    assert i < len(want_tokens), f"{prompt!r}: the batched reply is longer: {got_text!r} vs {want_text!r}"
    prompt_tokens = reference.tokenize(prompt)
    logits = reference.logits(prompt_tokens + want_tokens[:i])
    top = np.sort(logits[len(prompt_tokens) - 1 + max(0, i - 1):], axis=-1)[:, -2:]
    margin = float((top[:, 1] - top[:, 0]).min())
    assert margin < NEAR_TIE, (f"{prompt!r}: the batched reply parts at token {i} where the model was sure "
                               f"(margin {margin:.2f}): {got_text!r} vs {want_text!r}")
    return False


def same_logits(seen: dict, n: int, labels, tol: float) -> None:
    """Samplers 0..n-1 (batched) saw the top logits of samplers n..2n-1 (one at a time), within `tol`
    (`seen`: the `sampled_logits` fixture's record)."""
    for i in range(n):
        got, want = np.array(seen[i]), np.array(seen[n + i])
        assert got.shape == want.shape and abs(got - want).max() < tol, labels[i]


def wait_until(condition, what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting until {what}"
        time.sleep(0.01)
