"""Reusing the KV cache between calls: common prefix, shifted chunks, SWA safety.

The context's memory holds the KV of `tokens` at positions 0..len-1. For a
new prompt we keep the longest common prefix, then (when the memory can
shift) move later runs of cached tokens that reappear in the prompt into
place, as llama-server's cache reuse does. That is what lets a chat drop its
oldest turns and still evaluate only the new ones.

Gemma's sliding-window layers: unless the SWA cache is full size, llama.cpp
keeps only about n_swa + n_ubatch cells and overwrites older ones, and
`seq_rm` succeeds even when rolling back past them. A KV pool shared by
several sequences (the batch engine's) overwrites them even at full size: a
cell out of its sequence's window is free for any other sequence. We check
`seq_pos_min` and re-process rather than answer from a stale cache, as
llama-server does, and never shift such a cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from edge_runtime.backend.core import LlamaContext

log = logging.getLogger(__name__)

# Shorter matching runs are re-evaluated rather than shifted.
MIN_REUSE_CHUNK = 8


@dataclass
class ReuseOutcome:
    """How a prompt was matched against the cache."""

    reused: int  # prompt tokens whose KV was kept (prefix and shifted chunks)
    shifted: int  # of those, tokens moved to a new position
    reset_reason: str | None = None  # why the cache was discarded, if it was


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    """The tokens whose KV is in one sequence of a context's memory, and the reuse logic."""

    def __init__(self, ctx: LlamaContext, *, min_chunk: int = MIN_REUSE_CHUNK, seq: int = 0) -> None:
        self.ctx = ctx
        self.seq = seq
        self.min_chunk = min_chunk
        self.tokens: list[int] = []
        model = ctx.model
        # Positions a sliding-window layer still needs are only guaranteed with a full-size SWA cache
        # that no other sequence shares.
        self.swa_limited = model.n_swa > 0 and (not ctx.params.swa_full or ctx.params.kv_unified)
        self.can_shift = ctx.can_shift() and not self.swa_limited

    def reset(self) -> None:
        self._clear()
        self.tokens = []

    def _clear(self) -> None:
        if self.ctx.n_seq == 1:
            self.ctx.clear()
        else:
            self.ctx.seq_rm(0, -1, self.seq)

    def prepare(self, prompt: Sequence[int], spans: Sequence[tuple[int, int]] = ()) -> ReuseOutcome:
        """Keep what can be reused of the cache for `prompt`; drop the rest.

        Afterwards memory holds prompt[:outcome.reused]; at least the last
        prompt token is always left to evaluate (its logits are needed). A media
        span ([start, end) in `spans`) is kept whole or evaluated again whole.
        """
        cached = self.tokens
        n_past = common_prefix(cached, prompt)
        shifted = 0
        if self.can_shift and n_past < len(cached) and n_past < len(prompt):
            n_past, shifted = self._reuse_chunks(prompt, n_past)
        n_past = min(n_past, len(prompt) - 1)
        for start, end in spans:
            if start < n_past < end:
                n_past = start
        reason = None
        if self.swa_limited and n_past > 0:
            pos_min = self.ctx.pos_min(self.seq)
            if pos_min > max(0, n_past - self.ctx.model.n_swa):
                reason = (
                    f"sliding-window cache no longer holds positions {max(0, n_past - self.ctx.model.n_swa)}.."
                    f"{pos_min - 1}; re-processing the prompt"
                )
                log.debug(reason)
                n_past = 0
        if n_past > 0 and not self.ctx.seq_rm(n_past, -1, self.seq):
            reason = "llama.cpp could not trim the cache; re-processing the prompt"
            n_past = 0
        if n_past == 0:
            self._clear()
            shifted = 0
        self.tokens = list(prompt[:n_past])
        return ReuseOutcome(reused=n_past, shifted=shifted if n_past else 0, reset_reason=reason)

    def _reuse_chunks(self, prompt: Sequence[int], n_past: int) -> tuple[int, int]:
        cached = self.tokens
        head_c = head_p = n_past
        shifted = 0
        while head_c < len(cached) and head_p < len(prompt):
            n_match = 0
            while (
                head_c + n_match < len(cached)
                and head_p + n_match < len(prompt)
                and cached[head_c + n_match] == prompt[head_p + n_match]
            ):
                n_match += 1
            if n_match >= self.min_chunk:
                delta = head_p - head_c
                self.ctx.seq_rm(head_p, head_c, self.seq)
                self.ctx.seq_add(head_c, head_c + n_match, delta, self.seq)
                cached[head_p : head_p + n_match] = cached[head_c : head_c + n_match]
                shifted += n_match
                head_c += n_match
                head_p += n_match
                n_past = head_p
            else:
                head_c += 1
        return n_past, shifted

    def extend(self, tokens: Sequence[int]) -> None:
        """Record tokens just evaluated at the end of the memory."""
        self.tokens.extend(tokens)

    def sync_after_abort(self, prompt: Sequence[int]) -> None:
        """After an aborted decode: keep only what llama.cpp actually stored."""
        n = self.ctx.pos_max(self.seq) + 1
        self.tokens = list(prompt[: max(0, min(n, len(prompt)))])
        self.ctx.seq_rm(len(self.tokens), -1, self.seq)
