"""Decode audio files and raw arrays into 16 kHz mono float32.

Sample rate and channel layout are always explicit: files carry theirs, raw
arrays must be given a rate; a different rate is resampled (never assumed),
a layout that cannot be read unambiguously is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from edge_runtime.audio import SAMPLE_RATE
from edge_runtime.audio.resample import resample
from edge_runtime.errors import AudioError, InvalidArgumentError

AudioInput = Union[str, os.PathLike, np.ndarray]


@dataclass(frozen=True)
class AudioInfo:
    """What the source was before conversion."""

    sample_rate: int
    channels: int
    frames: int
    source: str  # file path or "array"
    decoder: str  # "soundfile", "av" or "array"

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


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data, int(rate)


def _read_av(path: Path) -> tuple[np.ndarray, int]:
    """Fallback decoder (PyAV/FFmpeg, installed with faster-whisper)."""
    import av

    chunks, rate, channels = [], None, None
    with av.open(str(path), metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise AudioError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            arr = frame.to_ndarray()  # planar: (channels, n); packed: (1, n*channels)
            channels = len(frame.layout.channels)
            rate = frame.sample_rate
            if frame.format.is_planar:
                arr = arr.T
            else:
                arr = arr.reshape(-1, channels)
            chunks.append(_to_float32(np.ascontiguousarray(arr)))
    if rate is None:
        return np.zeros((0, 1), dtype=np.float32), 0
    return np.concatenate(chunks, axis=0), int(rate)


def load_file(path: str | os.PathLike, *, target_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, AudioInfo]:
    """Decode a file (WAV, FLAC, OGG, MP3, ...) to mono float32 at `target_rate`."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"audio file not found: {p}")
    if p.is_dir():
        raise AudioError(f"{p} is a directory, not an audio file")
    errors = []
    for name, reader in (("soundfile", _read_soundfile), ("av", _read_av)):
        try:
            frames, rate = reader(p)
            decoder = name
            break
        except ImportError as exc:
            errors.append(f"{name}: not installed ({exc.name})")
        except AudioError:
            raise
        except Exception as exc:  # each decoder has its own error types; report them, don't leak them
            errors.append(f"{name}: {type(exc).__name__}: {exc}".strip())
    else:
        raise AudioError(f"cannot decode {p} (unsupported or corrupt audio): " + "; ".join(errors))
    if frames.shape[0] == 0 or rate <= 0:
        raise AudioError(f"{p} contains no audio samples")
    if not np.all(np.isfinite(frames)):
        raise AudioError(f"{p} contains NaN or infinite samples")
    info = AudioInfo(rate, frames.shape[1], frames.shape[0], str(p), decoder)
    return resample(_downmix(frames), rate, target_rate), info


def load_audio(source: AudioInput, sample_rate: int | None = None, *, channels: int | None = None,
               target_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, AudioInfo]:
    """A file path or a raw array -> (mono float32 at `target_rate`, AudioInfo).

    For arrays `sample_rate` is required; for files it is read from the file
    and a conflicting `sample_rate` argument is refused.
    """
    if isinstance(source, np.ndarray):
        return from_array(source, sample_rate, channels=channels, target_rate=target_rate)
    if isinstance(source, (list, tuple)):
        raise InvalidArgumentError("pass raw audio as a numpy array with its sample_rate")
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidArgumentError(f"audio source must be a path or a numpy array, got {type(source).__name__}")
    audio, info = load_file(source, target_rate=target_rate)
    if sample_rate is not None and sample_rate != info.sample_rate:
        raise InvalidArgumentError(
            f"{source} is {info.sample_rate} Hz but sample_rate={sample_rate} was given; "
            "omit sample_rate for files (they are resampled to 16 kHz automatically)"
        )
    if channels is not None and channels != info.channels:
        raise InvalidArgumentError(f"{source} has {info.channels} channel(s), not {channels}")
    return audio, info
