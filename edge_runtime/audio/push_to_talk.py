"""Push-to-talk: the audio captured while a key is held becomes one utterance.

The key's press and release times are recorded as they happen (from any
thread); each captured chunk is attributed by the time it *arrived*, so a
reader that falls behind while the engine works still cuts the utterance
where the user did. VAD still runs on what was held: a press over silence or
noise gives nothing, never invented text.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

import numpy as np

from edge_runtime.audio import SAMPLE_RATE
from edge_runtime.audio.engines import SpeechEngine
from edge_runtime.audio.live import LiveSettings, Utterance
from edge_runtime.audio.microphone import Microphone
from edge_runtime.audio.transcribe import MIN_DURATION, TranscribeSettings, transcribe
from edge_runtime.audio.vad import SileroVAD


class TalkButton:
    """Press and release times of a push-to-talk key; safe to drive from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[list[float]] = []  # [pressed, released]; released is inf while held
        self._closed = False

    def press(self) -> None:
        with self._lock:
            if not self._held():
                self._spans.append([time.monotonic(), float("inf")])

    def release(self) -> None:
        with self._lock:
            if self._held():
                self._spans[-1][1] = time.monotonic()

    def toggle(self) -> bool:
        """Press if released, release if pressed; True when now pressed."""
        with self._lock:
            if self._held():
                self._spans[-1][1] = time.monotonic()
                return False
            self._spans.append([time.monotonic(), float("inf")])
            return True

    def close(self) -> None:
        """No more presses will come (e.g. the key source ended)."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pressed(self) -> bool:
        with self._lock:
            return self._held()

    def _held(self) -> bool:
        return bool(self._spans) and self._spans[-1][1] == float("inf")

    def span_at(self, t: float) -> float | None:
        """Press time of the press holding time t, or None when the key was up at t."""
        with self._lock:
            for start, end in reversed(self._spans):
                if start <= t < end:
                    return start
                if end <= t:
                    break
        return None

    def released_at(self, pressed: float) -> float | None:
        """Release time of the press made at `pressed` (None while still held)."""
        with self._lock:
            end = next((e for s, e in self._spans if s == pressed), float("inf"))
        return None if end == float("inf") else end


class PushToTalkTranscriber:
    """Consumes a Microphone; yields one final Utterance per press (none for silence)."""

    def __init__(self, mic: Microphone, engine: SpeechEngine, button: TalkButton,
                 settings: LiveSettings | None = None) -> None:
        self.mic, self.engine, self.button = mic, engine, button
        self.settings = settings or LiveSettings()
        self.latencies: list[float] = []

    def _final(self, held: list[np.ndarray], start: int, released: float | None,
               vad: SileroVAD) -> Utterance | None:
        audio = np.concatenate(held)
        if audio.size < MIN_DURATION * SAMPLE_RATE:
            return None
        s = self.settings
        result = transcribe(audio, self.engine, sample_rate=SAMPLE_RATE, vad=vad,
                            settings=TranscribeSettings(language=s.language, task=s.task, segmenter=s.segmenter,
                                                        vad=s.vad))
        if not result.text:
            return None
        latency = time.monotonic() - released if released is not None else None
        if latency is not None:
            self.latencies.append(latency)
        return Utterance("final", result.text, start / SAMPLE_RATE, (start + audio.size) / SAMPLE_RATE, latency)

    def run(self) -> Iterator[Utterance]:
        held: list[np.ndarray] = []
        start, press = 0, None
        with SileroVAD(self.settings.vad) as vad:
            for chunk in self.mic.chunks():
                span = self.button.span_at(chunk.arrived)
                if span is not None and span == press:
                    held.append(chunk.audio)
                    continue
                if held:  # the press ended (or a new one began): one utterance
                    event = self._final(held, start, self.button.released_at(press), vad)
                    held = []
                    if event:
                        yield event
                press = span
                if span is not None:
                    start = chunk.start_sample
                    held.append(chunk.audio)
                elif self.button.closed and not self.button.pressed:
                    return
            if held:  # the stream ended while the key was still held
                event = self._final(held, start, self.button.released_at(press), vad)
                if event:
                    yield event
