"""Slots: the sequences of a batched context, each with the prompt its KV cache holds.

A request goes to the idle slot holding the longest prefix of it, so a
conversation's next turn lands where its history is (as llama-server's
`get_available_slot`), but only where it keeps at least as much of the cache
as it throws away: two conversations that share a system prompt must not take
turns evicting each other. Otherwise it goes to an empty slot, else to the one
idle the longest, whose cache is the least likely to be asked for again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from edge_runtime.backend.core import LlamaContext
from edge_runtime.prompt_cache import PromptCache, common_prefix

@dataclass(eq=False)
class Slot:
    """One sequence of the context: its prompt cache and whether a request is running on it."""

    seq: int
    cache: PromptCache
    busy: bool = False
    last_used: float = field(default_factory=time.monotonic)
    lora: tuple = ()  # the adapter set its cache was made under

    def release(self) -> None:
        self.busy = False
        self.last_used = time.monotonic()


def make_slots(ctx: LlamaContext) -> list[Slot]:
    return [Slot(seq, PromptCache(ctx, seq=seq)) for seq in range(ctx.n_seq)]


def pick_slot(slots: Sequence[Slot], keys: Sequence[int], lora: tuple = ()) -> Slot | None:
    """The idle slot for a prompt (its cache keys, its adapter set), or None when every slot is busy.
    A cache made under another adapter set shares nothing with the prompt."""
    idle = [s for s in slots if not s.busy]
    if not idle:
        return None
    scored = [(common_prefix(s.cache.tokens, keys) if s.lora == lora else 0, s) for s in idle]
    worth = [(kept, s) for kept, s in scored if kept > 0 and kept >= len(s.cache.tokens) - kept]
    if worth:
        return max(worth, key=lambda item: (item[0], item[1].last_used))[1]
    return min(idle, key=lambda s: (len(s.cache.tokens) > 0, s.last_used))
