"""Turning a token stream into text: incremental UTF-8 decoding and stop strings."""

from __future__ import annotations

import codecs
from typing import Callable, Sequence


class IncrementalDetokenizer:
    """Bytes of each token -> text, never splitting a multi-byte character.

    Each token costs the same whatever the length of the output so far: only
    the new token's bytes are decoded, incomplete UTF-8 sequences wait for the
    next token.
    """

    def __init__(self, token_to_bytes: Callable[[int], bytes]) -> None:
        self._token_to_bytes = token_to_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._decoder.decode(self._token_to_bytes(token))

    def flush(self) -> str:
        """Whatever is left (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Holds back text that may be the start of a stop string; stop strings are not emitted."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text safe to emit now. After a stop string, sets `stopped` and emits what preceded it."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self._pending += text
        first = -1
        for stop in self.stops:
            idx = self._pending.find(stop)
            if idx != -1 and (first == -1 or idx < first):
                first = idx
        if first != -1:
            out, self._pending, self.stopped = self._pending[:first], "", True
            return out
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self._pending)), keep, -1):
                if self._pending.endswith(stop[:k]):
                    keep = k
                    break
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return out

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return "" if self.stopped else out
