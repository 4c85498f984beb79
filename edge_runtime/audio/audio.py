"""Decode audio files and raw arrays into 16 kHz mono float32.

Sample rate and channel layout are always explicit: files carry theirs, raw
arrays must be given a rate; a different rate is resampled (never assumed),
a layout that cannot be read unambiguously is refused.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import numpy as np

from edge_runtime.audio import SAMPLE_RATE
from edge_runtime.audio.resample import Resampler, resample
from edge_runtime.errors import AudioError, InvalidArgumentError

log = logging.getLogger(__name__)

AudioInput = Union[str, os.PathLike, np.ndarray]


@dataclass(frozen=True)
class AudioInfo:
    """What the source was before conversion."""

    sample_rate: int
    channels: int
    frames: int
    source: str  # file path or "array"
    decoder: str  # "soundfile", "av" or "array"
    missing_seconds: float = 0.0  # audio a WAV header declares but the file does not hold (cut short)

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _to_float32(data: np.ndarray) -> np.ndarray:
    if data.dtype == np.float32:
        out = data
    elif data.dtype == np.float64:
        out = data.astype(np.float32)
    elif data.dtype == np.int16:
        out = data.astype(np.float32) / 32768.0
    elif data.dtype == np.int32:
        out = data.astype(np.float32) / 2147483648.0
    elif data.dtype == np.uint8:  # 8-bit PCM is unsigned
        out = (data.astype(np.float32) - 128.0) / 128.0
    else:
        raise InvalidArgumentError(
            f"unsupported sample type {data.dtype}; use float32/float64 in [-1, 1], int16, int32 or uint8"
        )
    if not np.all(np.isfinite(out)):
        raise InvalidArgumentError("audio contains NaN or infinite samples")
    return out


def _downmix(frames: np.ndarray) -> np.ndarray:
    """(frames, channels) -> mono by averaging the channels."""
    return frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)


def from_array(data: np.ndarray, sample_rate: int | None, *, channels: int | None = None,
               target_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, AudioInfo]:
    """Convert a raw array to mono float32 at `target_rate`.

    `data` is 1-D (mono) or 2-D (frames, channels). `sample_rate` is required.
    A 2-D array whose shape looks like (channels, frames) is refused unless
    `channels` says which axis holds channels.
    """
    if sample_rate is None:
        raise InvalidArgumentError("a raw audio array needs its sample_rate (e.g. sample_rate=16000)")
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise InvalidArgumentError(f"sample_rate must be a positive integer in Hz, got {sample_rate!r}")
    arr = np.asarray(data)
    if arr.ndim == 1:
        arr = arr[:, None]
        if channels not in (None, 1):
            raise InvalidArgumentError(f"a 1-D array is mono but channels={channels} was given")
    elif arr.ndim == 2:
        if channels is None:
            if arr.shape[1] > arr.shape[0]:
                raise InvalidArgumentError(
                    f"ambiguous array shape {arr.shape}: pass (frames, channels) or give channels="
                )
        elif arr.shape[1] != channels:
            if arr.shape[0] == channels:
                arr = arr.T  # (channels, frames) stated explicitly
            else:
                raise InvalidArgumentError(f"array shape {arr.shape} has no axis of {channels} channels")
    else:
        raise InvalidArgumentError(f"audio array must be 1-D or 2-D, got shape {arr.shape}")
    mono = _downmix(_to_float32(arr))
    info = AudioInfo(int(sample_rate), arr.shape[1], arr.shape[0], "array", "array")
    return resample(mono, int(sample_rate), target_rate), info


BLOCK_FRAMES = 1 << 16  # frames decoded at a time: memory does not grow with the file's length


def _open_soundfile(path: Path) -> tuple[int, int, int, Iterator[np.ndarray]]:
    import soundfile as sf

    fh = sf.SoundFile(str(path))

    def blocks() -> Iterator[np.ndarray]:
        with fh:
            yield from fh.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True)

    return int(fh.samplerate), int(fh.channels), int(fh.frames), blocks()


def _open_av(path: Path) -> tuple[int, int, int, Iterator[np.ndarray]]:
    """Fallback decoder (PyAV/FFmpeg, installed with faster-whisper)."""
    import av

    container = av.open(str(path), metadata_errors="ignore")
    if not container.streams.audio:
        container.close()
        raise AudioError(f"{path}: no audio stream")
    stream = container.streams.audio[0]
    rate, channels = int(stream.rate or 0), int(stream.channels or 0)
    frames = int(stream.duration * stream.time_base * rate) if stream.duration and stream.time_base else 0

    def blocks() -> Iterator[np.ndarray]:
        with container:
            for frame in container.decode(stream):
                arr = frame.to_ndarray()  # planar: (channels, n); packed: (1, n*channels)
                n_ch = len(frame.layout.channels)
                arr = arr.T if frame.format.is_planar else arr.reshape(-1, n_ch)
                yield _to_float32(np.ascontiguousarray(arr))

    return rate, channels, frames, blocks()


def _open_decoder(p: Path) -> tuple[str, int, int, int, Iterator[np.ndarray]]:
    """(decoder name, rate, channels, frames, blocks of (frames, channels)) of a file, checked before decoding."""
    if not p.exists():
        raise AudioError(f"audio file not found: {p}")
    if p.is_dir():
        raise AudioError(f"{p} is a directory, not an audio file")
    if p.stat().st_size == 0:
        raise AudioError(f"{p} is empty (0 bytes); record or export it again")
    errors = []
    for name, opener in (("soundfile", _open_soundfile), ("av", _open_av)):
        try:
            rate, channels, frames, blocks = opener(p)
            break
        except ImportError as exc:
            errors.append(f"{name}: not installed ({exc.name})")
        except AudioError:
            raise
        except Exception as exc:  # each decoder has its own error types; report them, don't leak them
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            errors.append(f"{name}: {type(exc).__name__}: {first_line[:200]}".strip())
    else:
        raise AudioError(f"cannot decode {p} (unsupported or corrupt audio): " + "; ".join(errors))
    if rate <= 0 or channels <= 0:
        raise AudioError(f"{p} contains no audio samples")
    return name, rate, channels, frames, blocks


def read_frames(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A whole file at its own rate and channel layout: ((frames, channels) float32, rate)."""
    p = Path(path)
    _, rate, channels, _, blocks = _open_decoder(p)
    frames = np.concatenate(list(blocks) or [np.zeros((0, channels), dtype=np.float32)])
    if frames.shape[0] == 0:
        raise AudioError(f"{p} contains no audio samples")
    return frames, rate


def stream_file(path: str | os.PathLike, *, target_rate: int = SAMPLE_RATE) -> tuple[AudioInfo, Iterator[np.ndarray]]:
    """Open a file (WAV, FLAC, OGG, MP3, ...): its AudioInfo at once, and its audio as mono
    float32 blocks at `target_rate`, decoded and resampled as they are read (memory does not
    grow with the file's length)."""
    p = Path(path)
    name, rate, channels, frames, blocks = _open_decoder(p)
    declared = _declared_wav_frames(p)
    missing = max(0, declared - frames) / rate if declared else 0.0
    if missing:
        log.warning("%s is cut short: its header declares %.1f s more audio than the file holds "
                    "(an interrupted recording or copy); only the first %.1f s are used", p, missing, frames / rate)
    info = AudioInfo(rate, channels, frames, str(p), name, round(missing, 3))
    return info, _resampled(blocks, rate, target_rate, p)


def _declared_wav_frames(path: Path) -> int:
    """Frames a RIFF/WAVE header declares in its data chunk (0: not a WAV, or length unknown)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return 0
    pos, block_align = 12, 0
    while pos + 8 <= len(head):
        chunk, size = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if chunk == b"fmt " and pos + 22 <= len(head):
            block_align = struct.unpack("<H", head[pos + 20:pos + 22])[0]
        if chunk == b"data":
            # 0 and 0xFFFFFFFF are what streaming writers put before they know the length
            if not block_align or size in (0, 0xFFFFFFFF):
                return 0
            return size // block_align
        pos += 8 + size + (size & 1)
    return 0


def _resampled(blocks: Iterator[np.ndarray], rate: int, target_rate: int, path: Path) -> Iterator[np.ndarray]:
    resampler = Resampler(rate, target_rate)
    try:
        for block in blocks:
            if not np.all(np.isfinite(block)):
                raise AudioError(f"{path} contains NaN or infinite samples")
            out = resampler.process(_downmix(block))
            if out.size:
                yield out
        tail = resampler.flush()
        if tail.size:
            yield tail
    except (AudioError, GeneratorExit):
        raise
    except Exception as exc:  # a decoder error mid-file (corrupt data)
        raise AudioError(f"cannot decode {path} past its start ({type(exc).__name__}: {exc}); the file is corrupt") from None
    finally:
        close = getattr(blocks, "close", None)
        if close:
            close()


def stream_audio(source: AudioInput, sample_rate: int | None = None, *, channels: int | None = None,
                 target_rate: int = SAMPLE_RATE) -> tuple[AudioInfo, Iterator[np.ndarray]]:
    """A file path or a raw array -> (AudioInfo, mono float32 blocks at `target_rate`).

    Files are checked (existence, format, the arguments given) before anything is
    decoded, then decoded block by block. For arrays `sample_rate` is required; for
    files it is read from the file and a conflicting `sample_rate` argument is refused.
    """
    if isinstance(source, np.ndarray):
        audio, info = from_array(source, sample_rate, channels=channels, target_rate=target_rate)
        return info, iter([audio])
    if isinstance(source, (list, tuple)):
        raise InvalidArgumentError("pass raw audio as a numpy array with its sample_rate")
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidArgumentError(f"audio source must be a path or a numpy array, got {type(source).__name__}")
    info, blocks = stream_file(source, target_rate=target_rate)
    if sample_rate is not None and sample_rate != info.sample_rate:
        blocks.close()
        raise InvalidArgumentError(
            f"{source} is {info.sample_rate} Hz but sample_rate={sample_rate} was given; "
            "omit sample_rate for files (they are resampled to 16 kHz automatically)"
        )
    if channels is not None and channels != info.channels:
        blocks.close()
        raise InvalidArgumentError(f"{source} has {info.channels} channel(s), not {channels}")
    return info, blocks


def load_audio(source: AudioInput, sample_rate: int | None = None, *, channels: int | None = None,
               target_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, AudioInfo]:
    """A file path or a raw array -> (mono float32 at `target_rate`, AudioInfo). See `stream_audio`."""
    if isinstance(source, np.ndarray):
        return from_array(source, sample_rate, channels=channels, target_rate=target_rate)
    info, blocks = stream_audio(source, sample_rate, channels=channels, target_rate=target_rate)
    audio = np.concatenate(list(blocks) or [np.zeros(0, dtype=np.float32)])
    if audio.size == 0:
        raise AudioError(f"{source} contains no audio samples")
    return audio, info
