"""File or array -> 16 kHz -> VAD segments -> engine -> timed transcript."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

import numpy as np

from edge_runtime.audio import SAMPLE_RATE
from edge_runtime.audio.audio import AudioInput, stream_audio
from edge_runtime.audio.engines import SpeechEngine, check_task
from edge_runtime.audio.segmenter import Segmenter, SegmenterSettings, SpeechSegment
from edge_runtime.audio.vad import CHUNK, SileroVAD, VadSettings
from edge_runtime.errors import AudioError

MIN_DURATION = 0.1  # seconds; shorter input cannot hold a word


@dataclass
class Segment:
    start: float
    end: float
    text: str
    translation: str | None = None  # set by a cascade translation; the transcript stays in `text`

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.translation is None:
            out.pop("translation")
        return out


@dataclass
class TranscriptionResult:
    segments: list[Segment]
    engine: str
    metrics: dict = field(default_factory=dict)
    translation_error: str | None = None  # why a requested translation is not given

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments).strip()

    @property
    def translation(self) -> str | None:
        """The translated text, when every segment was translated."""
        parts = [s.translation for s in self.segments]
        if not parts or any(p is None for p in parts):
            return None
        return " ".join(p for p in parts if p).strip()

    def to_dict(self) -> dict:
        out: dict = {"text": self.text}
        if self.translation is not None:
            out["translation"] = self.translation
        if self.translation_error:
            out["translation_error"] = self.translation_error
        out.update({"segments": [s.to_dict() for s in self.segments], "engine": self.engine, "metrics": self.metrics})
        return out

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    def to_srt(self) -> str:
        blocks = []
        for i, s in enumerate(self.segments, 1):
            text = s.text if s.translation is None else f"{s.text}\n{s.translation}"  # bilingual subtitles
            blocks.append(f"{i}\n{_srt_time(s.start)} --> {_srt_time(s.end)}\n{text}\n")
        return "\n".join(blocks)


    def to_vtt(self) -> str:
        blocks = ["WEBVTT\n"]
        for s in self.segments:
            text = s.text if s.translation is None else f"{s.text}\n{s.translation}"
            blocks.append(f"{_srt_time(s.start, '.')} --> {_srt_time(s.end, '.')}\n{text}\n")
        return "\n".join(blocks)


def _srt_time(t: float, sep: str = ",") -> str:
    ms = int(round(max(0.0, t) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


@dataclass(frozen=True)
class TranscribeSettings:
    language: str | None = None
    task: str = "transcribe"
    segmenter: SegmenterSettings = field(default_factory=SegmenterSettings)
    vad: VadSettings = field(default_factory=VadSettings)
    pack: bool = True  # pack segments into the engine's window (see transcribe_segments)


def speech_stream(blocks: Iterable[np.ndarray], settings: TranscribeSettings | None = None,
                  vad: SileroVAD | None = None, clock: dict[str, float] | None = None) -> Iterator[SpeechSegment]:
    """VAD segments of 16 kHz audio arriving in blocks (a fresh VAD stream).

    Segments come out as soon as they close, so memory is bounded by the open
    segment, not the length of the audio. `clock["vad"]` accumulates VAD time.
    """
    settings = settings or TranscribeSettings()
    own = vad is None
    vad = vad or SileroVAD(settings.vad)
    clock = clock if clock is not None else {}
    segmenter = Segmenter(settings.segmenter)
    total = 0

    def trimmed(segments: list[SpeechSegment]) -> list[SpeechSegment]:
        end = total / SAMPLE_RATE  # the last chunk is zero-padded past the real end
        for s in segments:
            if s.end > end:
                s.audio = s.audio[: max(0, int(round((end - s.start) * SAMPLE_RATE)))]
                s.end = end
        return segments

    try:
        vad.reset()
        carry = np.zeros(0, dtype=np.float32)
        for block in blocks:
            total += block.size
            buf = np.concatenate([carry, block]) if carry.size else block
            n = buf.size // CHUNK
            t = time.perf_counter()
            probs = vad.probabilities(buf[: n * CHUNK])
            clock["vad"] = clock.get("vad", 0.0) + time.perf_counter() - t
            for k in range(n):
                yield from trimmed(segmenter.push(buf[k * CHUNK:(k + 1) * CHUNK], float(probs[k])))
            carry = buf[n * CHUNK:].copy()
        if carry.size:
            last = np.zeros(CHUNK, dtype=np.float32)
            last[: carry.size] = carry
            yield from trimmed(segmenter.push(last, float(vad.probabilities(last)[0])))
        yield from trimmed(segmenter.flush())
    finally:
        if own:
            vad.close()


def find_speech(audio: np.ndarray, settings: TranscribeSettings | None = None,
                vad: SileroVAD | None = None) -> list[SpeechSegment]:
    """VAD segments of a 16 kHz clip (a fresh VAD stream)."""
    return list(speech_stream([np.asarray(audio, dtype=np.float32).reshape(-1)], settings, vad))


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


def pack_stream(segments: Iterable[SpeechSegment], max_seconds: float,
                gap_seconds: float = 0.3) -> Iterator[Window]:
    """Group consecutive segments into windows of at most `max_seconds`, each as soon as it is full.

    Whisper pads every call to 30 s, so one call per short segment wastes most
    of its encoder time; packing is what makes a file with many short
    utterances cheap (faster-whisper's vad_filter does the same).
    """
    gap = np.zeros(int(gap_seconds * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = []
    offsets: list[float] = []
    members: list[SpeechSegment] = []
    length = 0
    for seg in segments:
        extra = seg.audio.size + (gap.size if parts else 0)
        if parts and (length + extra) / SAMPLE_RATE > max_seconds:
            yield Window(np.concatenate(parts), offsets, members)
            parts, offsets, members, length = [], [], [], 0
            extra = seg.audio.size
        if parts:
            parts.append(gap)
        offsets.append((length + extra - seg.audio.size) / SAMPLE_RATE)
        parts.append(seg.audio)
        members.append(seg)
        length += extra
    if parts:
        yield Window(np.concatenate(parts), offsets, members)


def pack_segments(segments: list[SpeechSegment], max_seconds: float, gap_seconds: float = 0.3) -> list[Window]:
    """All the windows of `pack_stream` as a list."""
    return list(pack_stream(segments, max_seconds, gap_seconds))


def transcribe_segments(segments: Iterable[SpeechSegment], engine: SpeechEngine, settings: TranscribeSettings,
                        clock: dict[str, float] | None = None) -> Iterator[Segment]:
    """Run the engine on the speech; pieces get times on the source timeline.

    Engines with a fixed input window (`window_seconds`, Whisper's 30 s) get
    segments packed into windows; others get one call per segment.
    `clock` accumulates "engine" time and counts "engine_calls".
    """
    clock = clock if clock is not None else {}
    window_seconds = getattr(engine, "window_seconds", None) if settings.pack else None
    if window_seconds:
        windows: Iterable[Window] = pack_stream(segments, window_seconds)
    else:
        windows = (Window(seg.audio, [0.0], [seg]) for seg in segments)
    for win in windows:
        t = time.perf_counter()
        pieces = list(engine.transcribe(win.audio, language=settings.language, task=settings.task))
        clock["engine"] = clock.get("engine", 0.0) + time.perf_counter() - t
        clock["engine_calls"] = clock.get("engine_calls", 0) + 1
        for piece in pieces:
            p_start = piece.start or 0.0
            p_end = piece.end if piece.end is not None else win.audio.size / SAMPLE_RATE
            start, end = win.to_source(p_start, p_end)
            yield Segment(round(start, 3), round(end, 3), piece.text)


def _timed(blocks: Iterator[np.ndarray], clock: dict[str, float], stats: dict[str, float]) -> Iterator[np.ndarray]:
    """Pass blocks through, timing the decoder and counting samples."""
    while True:
        t = time.perf_counter()
        block = next(blocks, None)
        clock["decode"] = clock.get("decode", 0.0) + time.perf_counter() - t
        if block is None:
            return
        stats["samples"] = stats.get("samples", 0) + block.size
        yield block


def _counted(segments: Iterable[SpeechSegment], stats: dict[str, float]) -> Iterator[SpeechSegment]:
    for seg in segments:
        stats["speech_segments"] = stats.get("speech_segments", 0) + 1
        stats["speech_seconds"] = stats.get("speech_seconds", 0.0) + seg.duration
        yield seg


def transcribe(source: AudioInput, engine: SpeechEngine, *, sample_rate: int | None = None,
               settings: TranscribeSettings | None = None, vad: SileroVAD | None = None) -> TranscriptionResult:
    """Transcribe a file path or a raw array (with `sample_rate`).

    A file is decoded, resampled, segmented and transcribed as it is read: peak
    memory is bounded by one engine window, whatever the file's length. The
    engine never sees audio without detected speech: silence or noise gives an
    empty result, not hallucinated text.
    """
    settings = settings or TranscribeSettings()
    check_task(settings.task)
    t0 = time.perf_counter()
    info, blocks = stream_audio(source, sample_rate)
    clock: dict[str, float] = {}
    stats: dict[str, float] = {}
    speech = _counted(speech_stream(_timed(blocks, clock, stats), settings, vad, clock), stats)
    segments = list(transcribe_segments(speech, engine, settings, clock))
    t3 = time.perf_counter()
    samples = int(stats.get("samples", 0))
    duration = samples / SAMPLE_RATE
    if samples == 0:
        raise AudioError("the audio contains no samples")
    if duration < MIN_DURATION:
        raise AudioError(f"the audio is {duration * 1000:.0f} ms long; at least {MIN_DURATION * 1000:.0f} ms is needed")
    metrics = {
        "audio_seconds": round(duration, 3),
        "speech_seconds": round(stats.get("speech_seconds", 0.0), 3),
        "source_sample_rate": info.sample_rate,
        "source_channels": info.channels,
        "decode_seconds": round(clock.get("decode", 0.0), 4),
        "vad_seconds": round(clock.get("vad", 0.0), 4),
        "vad_ms_per_chunk": round(clock.get("vad", 0.0) * 1000 / max(1, -(-samples // CHUNK)), 4),
        "engine_seconds": round(clock.get("engine", 0.0), 4),
        "total_seconds": round(t3 - t0, 4),
        "real_time_factor": round((t3 - t0) / duration, 4),
        "speech_segments": int(stats.get("speech_segments", 0)),
        "engine_calls": int(clock.get("engine_calls", 0)),
    }
    if info.missing_seconds:
        metrics["missing_seconds"] = info.missing_seconds  # the file was cut short (a warning is logged)
    return TranscriptionResult(segments, getattr(engine, "name", type(engine).__name__), metrics)
