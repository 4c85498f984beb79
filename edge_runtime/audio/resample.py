"""Anti-aliasing sample-rate conversion: windowed-sinc, polyphase, numpy only.

`Resampler` is stateful so a microphone stream can be converted chunk by
chunk; `resample` converts a whole signal.  Output sample n sits at input time
n * M / L (L/M = out/in reduced); it is the sum of nearby input samples
weighted by a Kaiser-windowed sinc whose cutoff is just under the lower of the
two Nyquist frequencies.  The fractional offset takes only L values, so the
weights are a table of L phases computed once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import InvalidArgumentError


_EMIT_BLOCK = 4096  # outputs computed per step: bounds the [outputs x taps] index table


@dataclass(frozen=True)
class ResamplerSettings:
    """Filter design: the passband ends at `passband` x the lower Nyquist,
    the stopband begins at `stopband` x it, with `attenuation_db` rejection."""

    passband: float = 0.90
    stopband: float = 1.0
    attenuation_db: float = 90.0


def _design(up: int, down: int, settings: ResamplerSettings) -> tuple[np.ndarray, int]:
    """Return (phases [up, 2*half], half): weights for input offsets -half+1..half."""
    ratio = min(1.0, up / down)  # lower Nyquist relative to the input's
    cutoff = ratio * (settings.passband + settings.stopband) / 2  # fraction of input Nyquist
    transition = ratio * (settings.stopband - settings.passband) * math.pi  # rad per input sample
    a = settings.attenuation_db
    beta = 0.1102 * (a - 8.7) if a > 50 else 0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21)
    taps = math.ceil((a - 7.95) / (2.285 * transition)) + 1  # Kaiser's length estimate
    half = max(2, math.ceil(taps / 2))
    offsets = np.arange(-half + 1, half + 1, dtype=np.float64)  # d: input index minus floor(t)
    frac = np.arange(up, dtype=np.float64)[:, None] / up  # fractional part of t per phase
    tau = frac - offsets[None, :]  # t - k
    window = np.kaiser(2 * half + 1, beta)
    # Evaluate the (continuous) Kaiser window at tau by interpolating its samples.
    w = np.interp(tau, np.linspace(-half, half, 2 * half + 1), window, left=0.0, right=0.0)
    h = cutoff * np.sinc(cutoff * tau) * w
    h /= h.sum(axis=1, keepdims=True)  # unit DC gain in every phase
    return h.astype(np.float32), half


class Resampler:
    """Streaming resampler for one channel: `process(chunk)` then `flush()`.

    The output of process+flush over chunks equals `resample` of the joined
    input, sample for sample (same state machine).
    """

    def __init__(self, input_rate: int, output_rate: int, settings: ResamplerSettings | None = None):
        for name, rate in (("input_rate", input_rate), ("output_rate", output_rate)):
            if not isinstance(rate, (int, np.integer)) or rate <= 0:
                raise InvalidArgumentError(f"{name} must be a positive integer in Hz, got {rate!r}")
        g = math.gcd(int(input_rate), int(output_rate))
        self.input_rate, self.output_rate = int(input_rate), int(output_rate)
        self.up, self.down = self.output_rate // g, self.input_rate // g
        self.passthrough = self.up == self.down
        if not self.passthrough:
            self._phases, self._half = _design(self.up, self.down, settings or ResamplerSettings())
        else:
            self._half = 0
        self.reset()

    def reset(self) -> None:
        # The signal is preceded by `half` zeros so the first output is centred.
        self._buf = np.zeros(self._half, dtype=np.float32)
        self._buf_start = -self._half  # absolute input index of _buf[0]
        self._next_out = 0
        self._n_in = 0
        self._flushed = False

    @property
    def delay_seconds(self) -> float:
        """How far output lags input in a stream (the filter's look-ahead)."""
        return self._half / self.input_rate

    def _emit(self, last_out: int) -> np.ndarray:
        """Compute outputs _next_out..last_out-1 from the buffer, a bounded block at a time."""
        pieces = []
        taps = np.arange(-self._half + 1, self._half + 1)[None, :]
        for first in range(self._next_out, last_out, _EMIT_BLOCK):
            n = np.arange(first, min(first + _EMIT_BLOCK, last_out), dtype=np.int64)
            pos = n * self.down
            idx = (pos // self.up - self._buf_start)[:, None] + taps  # [block, taps]: memory per block only
            pieces.append(np.einsum("ij,ij->i", self._buf[idx], self._phases[pos % self.up]))
        self._next_out = max(self._next_out, last_out)
        # Drop input no later output can reach.
        next_i = (self._next_out * self.down) // self.up
        drop = next_i - self._half + 1 - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, dtype=np.float32)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed input samples (1-D float); return the outputs they complete."""
        if self._flushed:
            raise InvalidArgumentError("Resampler.process after flush(); call reset() first")
        x = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self._n_in += x.size
        if self.passthrough:
            return x.copy()
        self._buf = np.concatenate([self._buf, x])
        end = self._buf_start + self._buf.size  # one past the last input index held
        # Output n needs input up to floor(n*down/up) + half.
        last_i = end - 1 - self._half
        if last_i < 0:
            return np.zeros(0, dtype=np.float32)
        last_out = (last_i * self.up) // self.down + 1
        return self._emit(max(last_out, self._next_out))

    def flush(self) -> np.ndarray:
        """End of stream: return the remaining outputs (zero-padded look-ahead)."""
        self._flushed = True
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        total = -(-self._n_in * self.up // self.down)  # ceil(n_in * up / down)
        self._buf = np.concatenate([self._buf, np.zeros(self._half + 1, dtype=np.float32)])
        return self._emit(max(total, self._next_out))


def resample(audio: np.ndarray, input_rate: int, output_rate: int,
             settings: ResamplerSettings | None = None) -> np.ndarray:
    """Resample a 1-D signal; output length is ceil(len * output_rate / input_rate).

    Memory beyond the input and the output is bounded, whatever the length: the
    signal goes through the streaming resampler a block at a time.
    """
    r = Resampler(input_rate, output_rate, settings)
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if r.passthrough:
        return audio.copy()
    step = 16 * _EMIT_BLOCK
    pieces = [r.process(audio[i : i + step]) for i in range(0, audio.size, step)]
    return np.concatenate([*pieces, r.flush()])
