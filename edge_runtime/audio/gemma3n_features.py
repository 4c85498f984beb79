"""Gemma 3n's audio features in numpy: the log-mel spectrogram its audio encoder reads.

The same computation as transformers' `Gemma3nAudioFeatureExtractor` (the numerical
reference, compared in the tests): 16 kHz audio padded to a multiple of 128 samples
and cut at 30 s; frames of 512 samples every 160 (no centering) with HTK-style
pre-emphasis 0.97 over 513-sample windows; periodic Hann window; magnitude of a
1024-point FFT; 128 HTK mel bins from 125 to 7600 Hz, unnormalized;
`log(max(mel, 1e-5))`. Longer audio is split into 30 s clips, each its own item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_runtime.audio import SAMPLE_RATE
from edge_runtime.errors import InvalidArgumentError


@dataclass(frozen=True)
class Gemma3nFeatureSettings:
    """The feature extractor's configuration (Gemma 3n E2B/E4B's `preprocessor_config.json` values)."""

    n_mels: int = 128
    frame_length: int = 512  # 32 ms
    hop_length: int = 160  # 10 ms
    min_frequency: float = 125.0
    max_frequency: float = 7600.0
    preemphasis: float = 0.97
    mel_floor: float = 1e-5
    max_samples: int = 30 * SAMPLE_RATE  # one clip
    pad_to_multiple_of: int = 128

    @property
    def fft_length(self) -> int:
        return 2 * 2 ** math.ceil(math.log2(self.frame_length))  # "FFT overdrive": twice the frame's power of two


@dataclass
class AudioFeatures:
    """One clip's log-mel frames and which of them hold audio (False: padding)."""

    mel: np.ndarray  # [frames, n_mels] float32
    mask: np.ndarray  # [frames] bool


def mel_filters(settings: Gemma3nFeatureSettings) -> np.ndarray:
    """Triangular HTK mel filters, [fft_length // 2 + 1, n_mels]."""
    n_freqs = settings.fft_length // 2 + 1
    freqs = np.arange(n_freqs, dtype=np.float32) * (SAMPLE_RATE / settings.fft_length)
    mel_lo = 2595.0 * math.log10(1.0 + settings.min_frequency / 700.0)
    mel_hi = 2595.0 * math.log10(1.0 + settings.max_frequency / 700.0)
    edges = 700.0 * (10 ** (np.linspace(mel_lo, mel_hi, settings.n_mels + 2) / 2595.0) - 1.0)
    widths = np.diff(edges)
    slopes = edges[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    return np.maximum(np.zeros(1, dtype=np.float32), np.minimum(down, up))


class Gemma3nFeatureExtractor:
    """`extractor(audio_16k)` -> one AudioFeatures per 30 s clip."""

    def __init__(self, settings: Gemma3nFeatureSettings | None = None) -> None:
        self.settings = s = settings or Gemma3nFeatureSettings()
        n = np.arange(s.frame_length, dtype=np.float32)
        self.window = (0.5 * (1 - np.cos(2 * np.pi * n / s.frame_length))).astype(np.float32)  # periodic Hann
        self.filters = mel_filters(s)

    def clip(self, audio: np.ndarray) -> AudioFeatures:
        """Features of one clip of at most 30 s (16 kHz mono float)."""
        s = self.settings
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size > s.max_samples:
            raise InvalidArgumentError(f"a Gemma 3n audio clip holds at most {s.max_samples / SAMPLE_RATE:g} s; "
                                       "split longer audio with clips()")
        padded_len = -(-audio.size // s.pad_to_multiple_of) * s.pad_to_multiple_of
        padded = np.zeros(padded_len, dtype=np.float32)
        padded[: audio.size] = audio
        size = s.frame_length + 1  # one sample more: the pre-emphasis looks back one
        n_frames = (padded_len - size) // s.hop_length + 1
        if n_frames <= 0:
            return AudioFeatures(np.zeros((0, s.n_mels), np.float32), np.zeros(0, bool))
        windows = np.lib.stride_tricks.as_strided(
            padded, shape=(n_frames, size), strides=(padded.strides[0] * s.hop_length, padded.strides[0]))
        first = windows[:, :1] * (1.0 - s.preemphasis)  # HTK flavour: the first sample is only scaled
        rest = windows[:, 1:-1] - s.preemphasis * windows[:, :-2]
        frames = np.concatenate([first, rest], axis=1) * self.window
        magnitude = np.abs(np.fft.rfft(frames, n=s.fft_length, axis=-1))
        mel = np.log(np.maximum(magnitude @ self.filters, np.float64(s.mel_floor)))
        mask = (np.arange(padded_len) < audio.size)[:: s.hop_length][:n_frames]
        return AudioFeatures(mel.astype(np.float32), mask)

    def clips(self, audio: np.ndarray) -> list[AudioFeatures]:
        """Features of each 30 s piece of `audio`, in order (an empty input gives none)."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        step = self.settings.max_samples
        return [self.clip(audio[i : i + step]) for i in range(0, audio.size, step)]

    __call__ = clips
