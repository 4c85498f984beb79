"""The windowed-sinc polyphase resampler: passband, stopband, streaming."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.audio.resample import Resampler, resample
from edge_runtime.errors import InvalidArgumentError


def tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.sin(2 * np.pi * freq * t).astype(np.float32)


def level_db(x: np.ndarray, trim: int = 2000) -> float:
    """Amplitude of a sine relative to full scale, edges (filter ramp) excluded."""
    core = x[trim:-trim]
    return 20 * np.log10(np.sqrt(2 * np.mean(core.astype(np.float64) ** 2)) + 1e-15)


@pytest.mark.parametrize("rate", [48000, 44100, 22050])
@pytest.mark.parametrize("freq", [440.0, 3000.0, 7000.0])
def test_tone_below_nyquist_passes(rate, freq):
    out = resample(tone(freq, rate), rate, 16000)
    assert abs(level_db(out)) < 0.1  # passband ripple under 0.1 dB
    # and it is still that tone: the spectrum peaks at freq
    spectrum = np.abs(np.fft.rfft(out[2000:-2000] * np.hanning(out.size - 4000)))
    peak = np.argmax(spectrum) * 16000 / (out.size - 4000)
    assert abs(peak - freq) < 5


@pytest.mark.parametrize("rate", [48000, 44100])
@pytest.mark.parametrize("freq", [8500.0, 9000.0, 12000.0, 20000.0])
def test_tone_above_nyquist_is_attenuated(rate, freq):
    out = resample(tone(freq, rate), rate, 16000)
    assert level_db(out) < -60  # an alias would come back at full level without filtering


def test_output_length_and_dc_gain():
    x = np.ones(44100, dtype=np.float32)
    out = resample(x, 44100, 16000)
    assert out.size == 16000
    assert np.allclose(out[500:-500], 1.0, atol=1e-4)
    assert resample(np.ones(3, np.float32), 48000, 16000).size == 1


def test_upsampling_keeps_the_tone():
    out = resample(tone(1000.0, 8000), 8000, 16000)
    assert out.size == 16000
    assert abs(level_db(out) - 0.0) < 0.1
    ref = tone(1000.0, 16000)
    assert np.max(np.abs(out[1000:-1000] - ref[1000:-1000])) < 1e-3


def test_same_rate_is_identity():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert np.array_equal(resample(x, 16000, 16000), x)


@pytest.mark.parametrize("rate", [48000, 44100, 8000])
def test_streaming_equals_whole_signal(rate):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(rate).astype(np.float32)
    whole = resample(x, rate, 16000)
    r = Resampler(rate, 16000)
    parts, pos = [], 0
    while pos < x.size:  # irregular chunk sizes, like a sound card
        n = int(rng.integers(1, 3000))
        parts.append(r.process(x[pos:pos + n]))
        pos += n
    parts.append(r.flush())
    streamed = np.concatenate(parts)
    assert streamed.size == whole.size
    assert np.max(np.abs(streamed - whole)) < 1e-5


def test_process_after_flush_is_refused_until_reset():
    r = Resampler(48000, 16000)
    r.process(np.zeros(480, np.float32))
    r.flush()
    with pytest.raises(InvalidArgumentError):
        r.process(np.zeros(480, np.float32))
    r.reset()
    assert r.process(np.zeros(4800, np.float32)).size > 0


@pytest.mark.parametrize("bad", [0, -16000, 16000.5, None])
def test_bad_rates(bad):
    with pytest.raises(InvalidArgumentError):
        Resampler(bad, 16000)
