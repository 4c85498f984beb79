"""A prompt as the context will hold it: runs of text tokens and media spans.

A media span stands for the positions an image or clip takes. It is named by a
hash of its content (and of the encoder that embeds it), so the prompt cache can
tell that turn 20 of a conversation still starts with the same photo, as
llama-server does with its media ids. In the cache, span positions get negative
keys derived from that hash: they never match a text token, and a span is
reused whole or not at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from collections import OrderedDict
from typing import Callable, Protocol, Sequence, Union

import numpy as np

from edge_runtime.backend.core import LlamaContext

_KEY_SPACE = 2**61


class MediaEmbedder(Protocol):
    """Something that turns a span's media into input embeddings for the text model."""

    def embeddings(self, span: "MediaSpan") -> np.ndarray:
        ...


@dataclass(eq=False)
class MediaSpan:
    """Positions taken by one encoded media item."""

    digest: str  # hash of the content and of the encoder
    n_pos: int
    kind: str  # "image" or "audio"
    embedder: MediaEmbedder
    payload: object = None  # what the embedder needs to encode it (samples, pixels)
    non_causal: bool = False  # the rows attend to each other both ways (Gemma 3 images)

    def keys(self) -> list[int]:
        base = int(self.digest[:15], 16)
        return [-1 - ((base + i) % _KEY_SPACE) for i in range(self.n_pos)]


Run = Union[list[int], MediaSpan]


@dataclass
class EvalReport:
    """What evaluating (part of) a plan did."""

    evaluated: int  # positions evaluated (fewer than asked only when aborted)
    media_encode_s: float = 0.0
    media_items: int = 0


@dataclass
class PromptPlan:
    """Runs of tokens and media spans, in order."""

    runs: list[Run] = field(default_factory=list)

    @classmethod
    def of_tokens(cls, tokens: Sequence[int]) -> "PromptPlan":
        return cls([list(tokens)])

    def __len__(self) -> int:
        return sum(r.n_pos if isinstance(r, MediaSpan) else len(r) for r in self.runs)

    @property
    def has_media(self) -> bool:
        return any(isinstance(r, MediaSpan) for r in self.runs)

    def keys(self) -> list[int]:
        """Cache keys, one per position: token ids, negative keys at media positions."""
        out: list[int] = []
        for run in self.runs:
            out.extend(run.keys() if isinstance(run, MediaSpan) else run)
        return out

    def span_ranges(self) -> list[tuple[int, int]]:
        """[start, end) of every media span."""
        out, pos = [], 0
        for run in self.runs:
            n = run.n_pos if isinstance(run, MediaSpan) else len(run)
            if isinstance(run, MediaSpan):
                out.append((pos, pos + n))
            pos += n
        return out

    def evaluate(self, ctx: LlamaContext, start: int) -> EvalReport:
        """Evaluate every position from `start` (not inside a span) to the end; the last
        position's logits are kept. Media are encoded as they are reached."""
        report = EvalReport(0)
        pos = 0
        total = len(self)
        for run in self.runs:
            n = run.n_pos if isinstance(run, MediaSpan) else len(run)
            end = pos + n
            if end <= start:
                pos = end
                continue
            last = end == total
            if isinstance(run, MediaSpan):
                t0 = time.perf_counter()
                rows = run.embedder.embeddings(run)
                report.media_encode_s += time.perf_counter() - t0
                report.media_items += 1
                done = ctx.decode_embeddings(rows, pos, non_causal=run.non_causal, logits_last=last)
            else:
                todo = run[start - pos:] if start > pos else run
                first = max(start, pos)
                done = ctx.decode(todo, first, logits="last" if last else "none")
                n = len(todo)
                pos = first
            report.evaluated += done
            if done < n:
                return report
            pos = end
        return report


class MediaCache:
    """What an encoder keeps per media item, by content hash: its runs (small; many kept) and its
    embedding rows (bounded in bytes), so a conversation's media are laid out and encoded once."""

    def __init__(self, max_items: int = 256, max_bytes: int = 256 * 2**20) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._runs: OrderedDict[str, list] = OrderedDict()
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()

    def runs(self, key: str, build: Callable[[], list]) -> list:
        found = self._runs.get(key)
        if found is None:
            found = self._runs[key] = build()
            while len(self._runs) > self.max_items:
                self._runs.popitem(last=False)
        self._runs.move_to_end(key)
        return found

    def rows(self, digest: str, encode: Callable[[], np.ndarray]) -> np.ndarray:
        found = self._rows.get(digest)
        if found is None:
            found = self._rows[digest] = encode()
            while sum(r.nbytes for r in self._rows.values()) > self.max_bytes and len(self._rows) > 1:
                self._rows.popitem(last=False)
        self._rows.move_to_end(digest)
        return found

    def clear(self) -> None:
        self._runs.clear()
        self._rows.clear()
