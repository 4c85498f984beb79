"""File or array -> 16 kHz -> VAD segments -> engine -> timed transcript."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np

from edge_runtime.audio import SAMPLE_RATE
from edge_runtime.audio.audio import AudioInput, AudioInfo, load_audio
from edge_runtime.audio.engines import SpeechEngine, check_task
from edge_runtime.audio.segmenter import SegmenterSettings, SpeechSegment, segment_audio
from edge_runtime.audio.vad import CHUNK, SileroVAD, VadSettings
from edge_runtime.errors import AudioError

MIN_DURATION = 0.1  # seconds; shorter input cannot hold a word


@dataclass
class Segment:
    start: float
    end: float
    text: str


@dataclass
class TranscriptionResult:
    segments: list[Segment]
    engine: str
    metrics: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments).strip()

    def to_dict(self) -> dict:
        return {"text": self.text, "segments": [asdict(s) for s in self.segments],
                "engine": self.engine, "metrics": self.metrics}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    def to_srt(self) -> str:
        blocks = []
        for i, s in enumerate(self.segments, 1):
            blocks.append(f"{i}\n{_srt_time(s.start)} --> {_srt_time(s.end)}\n{s.text}\n")
        return "\n".join(blocks)


def _srt_time(t: float) -> str:
    ms = int(round(max(0.0, t) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


@dataclass(frozen=True)
class TranscribeSettings:
    language: str | None = None
    task: str = "transcribe"
    segmenter: SegmenterSettings = field(default_factory=SegmenterSettings)
    vad: VadSettings = field(default_factory=VadSettings)


def find_speech(audio: np.ndarray, settings: TranscribeSettings | None = None,
                vad: SileroVAD | None = None) -> list[SpeechSegment]:
    """VAD segments of a 16 kHz clip (a fresh VAD stream)."""
    settings = settings or TranscribeSettings()
    own = vad is None
    vad = vad or SileroVAD(settings.vad)
    try:
        vad.reset()
        probs = vad.probabilities(audio)
    finally:
        if own:
            vad.close()
    return segment_audio(audio, probs, settings.segmenter)


def transcribe_segments(segments: list[SpeechSegment], engine: SpeechEngine,
                        settings: TranscribeSettings) -> Iterator[Segment]:
    """Run the engine on each speech segment; pieces get absolute times."""
    for seg in segments:
        for piece in engine.transcribe(seg.audio, language=settings.language, task=settings.task):
            start = seg.start + (piece.start or 0.0)
            end = seg.start + piece.end if piece.end is not None else seg.end
            yield Segment(round(start, 3), round(min(max(end, start), seg.end), 3), piece.text)


def transcribe(source: AudioInput, engine: SpeechEngine, *, sample_rate: int | None = None,
               settings: TranscribeSettings | None = None, vad: SileroVAD | None = None) -> TranscriptionResult:
    """Transcribe a file path or a raw array (with `sample_rate`).

    The engine never sees audio without detected speech: silence or noise
    gives an empty result, not hallucinated text.
    """
    settings = settings or TranscribeSettings()
    check_task(settings.task)
    t0 = time.perf_counter()
    audio, info = load_audio(source, sample_rate)
    t1 = time.perf_counter()
    duration = audio.size / SAMPLE_RATE
    if audio.size == 0:
        raise AudioError("the audio contains no samples")
    if duration < MIN_DURATION:
        raise AudioError(f"the audio is {duration * 1000:.0f} ms long; at least {MIN_DURATION * 1000:.0f} ms is needed")
    speech = find_speech(audio, settings, vad)
    t2 = time.perf_counter()
    segments = list(transcribe_segments(speech, engine, settings))
    t3 = time.perf_counter()
    n_chunks = -(-audio.size // CHUNK)
    metrics = {
        "audio_seconds": round(duration, 3),
        "speech_seconds": round(sum(s.duration for s in speech), 3),
        "source_sample_rate": info.sample_rate,
        "source_channels": info.channels,
        "decode_seconds": round(t1 - t0, 4),
        "vad_seconds": round(t2 - t1, 4),
        "vad_ms_per_chunk": round((t2 - t1) * 1000 / max(1, n_chunks), 4),
        "engine_seconds": round(t3 - t2, 4),
        "total_seconds": round(t3 - t0, 4),
        "real_time_factor": round((t3 - t0) / duration, 4),
        "speech_segments": len(speech),
    }
    return TranscriptionResult(segments, getattr(engine, "name", type(engine).__name__), metrics)
