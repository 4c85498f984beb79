"""Streaming endpointing: speech probabilities (one per 32 ms chunk) -> segments.

A segment opens when the probability reaches `threshold` and closes after
`min_silence_ms` below `threshold - hysteresis`.  It is padded with
`pad_ms` of audio on both sides (the leading pad from a pre-roll buffer),
dropped if its speech is shorter than `min_speech_ms`, and split at the best
pause inside it when it would exceed `max_segment_s`.  Segments are emitted by
`push` as soon as they close.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.audio import SAMPLE_RATE
from edge_runtime.audio.vad import CHUNK
from edge_runtime.errors import InvalidArgumentError


@dataclass(frozen=True)
class SegmenterSettings:
    threshold: float = 0.5
    hysteresis: float = 0.15  # speech continues while prob >= threshold - hysteresis
    min_speech_ms: int = 250
    min_silence_ms: int = 500
    pad_ms: int = 200
    max_segment_s: float = 30.0  # Gemma's audio window

    def validate(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise InvalidArgumentError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.hysteresis < self.threshold:
            raise InvalidArgumentError("hysteresis must be >= 0 and below threshold")
        if min(self.min_speech_ms, self.min_silence_ms, self.pad_ms) < 0:
            raise InvalidArgumentError("durations must not be negative")
        if self.pad_ms > self.min_silence_ms:
            raise InvalidArgumentError("pad_ms must not exceed min_silence_ms")
        if self.max_segment_s * 1000 < self.min_speech_ms + 2 * self.pad_ms + 32:
            raise InvalidArgumentError("max_segment_s is too short for the other settings")


@dataclass
class SpeechSegment:
    """A span of speech: times in seconds from the stream start, 16 kHz audio."""

    start: float
    end: float
    audio: np.ndarray = field(repr=False)

    @property
    def duration(self) -> float:
        return self.end - self.start


def _chunks(ms: float) -> int:
    return int(round(ms / 1000 * SAMPLE_RATE / CHUNK))


class Segmenter:
    """Feed `push(chunk_audio, probability)` per 512-sample chunk; `flush()` at the end."""

    def __init__(self, settings: SegmenterSettings | None = None):
        self.settings = settings or SegmenterSettings()
        self.settings.validate()
        s = self.settings
        self._neg = s.threshold - s.hysteresis
        self._min_speech = max(1, _chunks(s.min_speech_ms))
        self._min_silence = max(1, _chunks(s.min_silence_ms))
        self._pad = _chunks(s.pad_ms)
        self._max = int(s.max_segment_s * SAMPLE_RATE / CHUNK)
        self.reset()

    def reset(self) -> None:
        self._index = 0  # chunks seen
        self._preroll: deque[np.ndarray] = deque(maxlen=self._pad)
        self._active = False
        self._seg_start = 0  # first chunk index held in _audio
        self._audio: list[np.ndarray] = []
        self._probs: list[float] = []
        self._last_speech = -1  # chunk index of the last chunk above neg threshold
        self._speech_start = 0
        self._silence = 0

    @property
    def in_speech(self) -> bool:
        return self._active

    def current_audio(self) -> np.ndarray:
        """Audio of the open segment so far (for partial results)."""
        return np.concatenate(self._audio) if self._audio else np.zeros(0, dtype=np.float32)

    def _make(self, first: int, last: int) -> SpeechSegment:
        """Segment over absolute chunk indices [first, last] (both held in _audio)."""
        a = np.concatenate(self._audio[first - self._seg_start: last - self._seg_start + 1])
        return SpeechSegment(first * CHUNK / SAMPLE_RATE, (last + 1) * CHUNK / SAMPLE_RATE, a)

    def _close(self, end_chunk: int) -> list[SpeechSegment]:
        """Close at the last speech chunk plus the trailing pad."""
        out = []
        last = min(end_chunk, self._last_speech + self._pad)
        if self._last_speech - self._speech_start + 1 >= self._min_speech:
            out.append(self._make(self._seg_start, last))
        # Silence after the trailing pad becomes pre-roll for the next segment.
        self._preroll.clear()
        if self._pad:
            self._preroll.extend(self._audio[max(0, last + 1 - self._seg_start):])
        self._active = False
        self._audio, self._probs = [], []
        return out

    def _split(self) -> list[SpeechSegment]:
        """The open segment reached max length: cut at the best pause, keep the rest open."""
        probs = np.asarray(self._probs)
        # Only cut in the second half so no piece is tiny; score = run of quiet chunks.
        lo = len(probs) // 2
        quiet = probs < self._neg
        best, best_len, run = None, 0, 0
        for i in range(lo, len(probs)):
            run = run + 1 if quiet[i] else 0
            if run > best_len:
                best_len, best = run, i - run // 2  # middle of the pause
        if best is None:
            best = lo + int(np.argmin(probs[lo:]))  # no pause: the least speech-like chunk
        cut = self._seg_start + best  # chunk index where the first piece ends (inclusive)
        seg = self._make(self._seg_start, cut)
        keep = best + 1
        self._audio, self._probs = self._audio[keep:], self._probs[keep:]
        self._seg_start = cut + 1
        self._speech_start = self._seg_start
        return [seg]

    def push(self, chunk: np.ndarray, prob: float) -> list[SpeechSegment]:
        """Add one 512-sample chunk and its speech probability; return closed segments."""
        out: list[SpeechSegment] = []
        i = self._index
        self._index += 1
        if not self._active:
            if prob >= self.settings.threshold:
                self._active = True
                self._seg_start = i - len(self._preroll)
                self._audio = list(self._preroll) + [chunk]
                self._probs = [0.0] * len(self._preroll) + [prob]
                self._preroll.clear()
                self._speech_start = self._last_speech = i
                self._silence = 0
            elif self._pad:
                self._preroll.append(chunk)
            return out
        self._audio.append(chunk)
        self._probs.append(prob)
        if prob >= self._neg:
            self._last_speech = i
            self._silence = 0
        else:
            self._silence += 1
            if self._silence >= self._min_silence:
                return out + self._close(i)
        if self._active and len(self._audio) >= self._max:
            out += self._split()
        return out

    def flush(self) -> list[SpeechSegment]:
        """End of stream: close the open segment, if any."""
        out = self._close(self._index - 1) if self._active else []
        self._preroll.clear()
        return out


def segment_audio(audio: np.ndarray, probs: np.ndarray, settings: SegmenterSettings | None = None) -> list[SpeechSegment]:
    """Whole-clip convenience: segments of `audio` given its per-chunk probabilities."""
    seg = Segmenter(settings)
    n = len(probs)
    padded = np.zeros(n * CHUNK, dtype=np.float32)
    padded[: min(audio.size, n * CHUNK)] = audio[: n * CHUNK]
    out: list[SpeechSegment] = []
    for k in range(n):
        out += seg.push(padded[k * CHUNK:(k + 1) * CHUNK], float(probs[k]))
    out += seg.flush()
    # The last segment may run into zero padding past the real end.
    end = audio.size / SAMPLE_RATE
    for s in out:
        if s.end > end:
            s.audio = s.audio[: max(0, int(round((end - s.start) * SAMPLE_RATE)))]
            s.end = end
    return out
