"""Live speech recognition: microphone chunks -> VAD -> segmenter -> engine.

Events are yielded as they happen: partial text while an utterance is still
open (optional, rate-limited), and the final text once it closes, with the
latency from the end of speech (arrival of its last speech sample) to the
final text.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from edge_runtime.audio import SAMPLE_RATE
from edge_runtime.audio.engines import SpeechEngine
from edge_runtime.audio.microphone import Microphone
from edge_runtime.audio.segmenter import Segmenter, SegmenterSettings, SpeechSegment
from edge_runtime.audio.vad import CHUNK, SileroVAD, VadSettings


@dataclass
class Utterance:
    kind: str  # "partial" or "final"
    text: str
    start: float  # seconds from the stream start
    end: float
    latency: float | None = None  # final only: end of speech -> text ready, seconds


@dataclass(frozen=True)
class LiveSettings:
    language: str | None = None
    task: str = "transcribe"
    partial_interval: float = 0.0  # seconds of new speech between partials; 0 = no partials
    segmenter: SegmenterSettings = SegmenterSettings(min_silence_ms=500)
    vad: VadSettings = VadSettings()


class LiveTranscriber:
    """Consumes a Microphone; `for event in live.run(): ...`."""

    def __init__(self, mic: Microphone, engine: SpeechEngine, settings: LiveSettings | None = None):
        self.mic, self.engine = mic, engine
        self.settings = settings or LiveSettings()
        self.latencies: list[float] = []
        self.vad_seconds = 0.0
        self.vad_chunks = 0

    def _text(self, audio: np.ndarray) -> str:
        pieces = self.engine.transcribe(audio, language=self.settings.language, task=self.settings.task)
        return " ".join(p.text for p in pieces).strip()

    def _final(self, seg: SpeechSegment, arrivals: deque) -> Utterance | None:
        text = self._text(seg.audio)
        speech_end = seg.end - self.settings.segmenter.pad_ms / 1000  # the pad is not speech
        sample = int(speech_end * SAMPLE_RATE)
        arrived = next((t for end, t in arrivals if end >= sample), None)
        latency = time.monotonic() - arrived if arrived is not None else None
        if latency is not None:
            self.latencies.append(latency)
        return Utterance("final", text, seg.start, seg.end, latency) if text else None

    def run(self) -> Iterator[Utterance]:
        s = self.settings
        segmenter = Segmenter(s.segmenter)
        arrivals: deque = deque(maxlen=4096)  # (end sample, arrival time) per captured chunk
        pending = np.zeros(0, dtype=np.float32)
        position = 0  # 16 kHz samples passed to the VAD
        last_partial = 0.0
        with SileroVAD(s.vad) as vad:
            for chunk in self.mic.chunks():
                arrivals.append((chunk.start_sample + chunk.audio.size, chunk.arrived))
                pending = np.concatenate([pending, chunk.audio])
                while pending.size >= CHUNK:
                    piece, pending = pending[:CHUNK], pending[CHUNK:]
                    t0 = time.perf_counter()
                    prob = vad(piece)
                    self.vad_seconds += time.perf_counter() - t0
                    self.vad_chunks += 1
                    position += CHUNK
                    for seg in segmenter.push(piece, prob):
                        last_partial = 0.0
                        event = self._final(seg, arrivals)
                        if event:
                            yield event
                if s.partial_interval > 0 and segmenter.in_speech and self.mic.backlog < 4:
                    current = segmenter.current_audio()
                    if current.size / SAMPLE_RATE - last_partial >= s.partial_interval:
                        last_partial = current.size / SAMPLE_RATE
                        text = self._text(current)
                        if text:
                            start = position / SAMPLE_RATE - last_partial
                            yield Utterance("partial", text, start, position / SAMPLE_RATE)
            if pending.size:
                piece = np.zeros(CHUNK, dtype=np.float32)
                piece[: pending.size] = pending
                for seg in segmenter.push(piece, vad(piece)):
                    event = self._final(seg, arrivals)
                    if event:
                        yield event
            for seg in segmenter.flush():
                event = self._final(seg, arrivals)
                if event:
                    yield event
