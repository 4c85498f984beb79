"""File or array -> 16 kHz -> VAD segments -> engine -> timed transcript."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np

from edge_runtime.audio import SAMPLE_RATE
from edge_runtime.audio.audio import AudioInput, load_audio
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
    pack: bool = True  # pack segments into the engine's window (see transcribe_segments)


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


@dataclass
class Window:
    """Speech segments packed end to end (with short gaps) into one engine call."""

    audio: np.ndarray
    offsets: list[float]  # where each segment starts inside `audio`, seconds
    segments: list[SpeechSegment]

    def to_source(self, start: float, end: float) -> tuple[float, float]:
        """Map a piece's [start, end] inside the window back to the source timeline.

        Whisper's timestamps are coarse (they may fall in a gap or a little
        into the neighbouring segment), so a piece belongs to the segments it
        overlaps substantially; its start is mapped in the first, its end in
        the last.
        """
        spans = [(off, off + seg.duration) for off, seg in zip(self.offsets, self.segments)]
        overlaps = [max(0.0, min(end, b) - max(start, a)) for a, b in spans]
        need = min(0.25, 0.5 * max(end - start, 0.0))
        hits = [k for k, o in enumerate(overlaps) if o > 0 and o >= need]
        if not hits:
            hits = [max(range(len(spans)), key=lambda k: (overlaps[k], -abs(spans[k][0] - start)))]
        first, last = self.segments[hits[0]], self.segments[hits[-1]]
        s = first.start + min(max(start - self.offsets[hits[0]], 0.0), first.duration)
        e = last.start + min(max(end - self.offsets[hits[-1]], 0.0), last.duration)
        return s, max(s, e)


def pack_segments(segments: list[SpeechSegment], max_seconds: float, gap_seconds: float = 0.3) -> list[Window]:
    """Group consecutive segments into windows of at most `max_seconds`.

    Whisper pads every call to 30 s, so one call per short segment wastes most
    of its encoder time; packing is what makes a file with many short
    utterances cheap (faster-whisper's vad_filter does the same).
    """
    windows: list[Window] = []
    gap = np.zeros(int(gap_seconds * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = []
    offsets: list[float] = []
    members: list[SpeechSegment] = []
    length = 0
    for seg in segments:
        extra = seg.audio.size + (gap.size if parts else 0)
        if parts and (length + extra) / SAMPLE_RATE > max_seconds:
            windows.append(Window(np.concatenate(parts), offsets, members))
            parts, offsets, members, length = [], [], [], 0
            extra = seg.audio.size
        if parts:
            parts.append(gap)
        offsets.append((length + extra - seg.audio.size) / SAMPLE_RATE)
        parts.append(seg.audio)
        members.append(seg)
        length += extra
    if parts:
        windows.append(Window(np.concatenate(parts), offsets, members))
    return windows


def transcribe_segments(segments: list[SpeechSegment], engine: SpeechEngine,
                        settings: TranscribeSettings) -> Iterator[Segment]:
    """Run the engine on the speech; pieces get times on the source timeline.

    Engines with a fixed input window (`window_seconds`, Whisper's 30 s) get
    segments packed into windows; others get one call per segment.
    """
    window_seconds = getattr(engine, "window_seconds", None) if settings.pack else None
    if window_seconds:
        windows = pack_segments(segments, window_seconds)
    else:
        windows = [Window(seg.audio, [0.0], [seg]) for seg in segments]
    for win in windows:
        for piece in engine.transcribe(win.audio, language=settings.language, task=settings.task):
            p_start = piece.start or 0.0
            p_end = piece.end if piece.end is not None else win.audio.size / SAMPLE_RATE
            start, end = win.to_source(p_start, p_end)
            yield Segment(round(start, 3), round(end, 3), piece.text)


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
        "engine_calls": len(pack_segments(speech, engine.window_seconds))
        if settings.pack and getattr(engine, "window_seconds", None) else len(speech),
    }
    return TranscriptionResult(segments, getattr(engine, "name", type(engine).__name__), metrics)
