"""Long recordings at 44.1/48 kHz: transcription's peak memory does not grow with the file's length."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from audio_speech import SR, speak, wer
from edge_runtime.audio.audio import load_audio
from edge_runtime.audio.resample import resample

sf = pytest.importorskip("soundfile")
pytest.importorskip("faster_whisper")

SAID = "Hello, my name is John and I live in London."
PEAK = ("import resource, runpy, sys; sys.argv = ['edge-runtime', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('edge_runtime', run_name='__main__')\n"
        "finally:\n    print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")


def _recording(path, speech: np.ndarray, seconds: float, rate: int) -> None:
    """`seconds` of 48/44.1 kHz audio: the sentence near the start, near the end, quiet noise between."""
    loud = resample(speech, SR, rate)
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as out:
        written, block = 0, rate * 10
        total = int(seconds * rate)
        out.write(np.concatenate([np.zeros(rate), loud]))
        written += rate + loud.size
        while written < total - loud.size - rate:
            n = min(block, total - loud.size - rate - written)
            out.write((rng.standard_normal(n) * 1e-4).astype(np.float32))
            written += n
        out.write(np.concatenate([loud, np.zeros(rate)]))


def _transcribe(path) -> tuple[dict, float]:
    proc = subprocess.run([sys.executable, "-c", PEAK, "transcribe", str(path), "--format", "json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak_mb = int(proc.stderr.split("PEAK_KB")[1].split()[0]) / 1024
    return json.loads(proc.stdout), peak_mb


def test_ten_minutes_at_48k_transcribe_in_the_memory_of_thirty_seconds(tmp_path):
    speech = speak(SAID, tmp_path)
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    _recording(short, speech, 30, 48000)
    _recording(long, speech, 600, 48000)
    out_short, peak_short = _transcribe(short)
    out_long, peak_long = _transcribe(long)
    assert wer(SAID, out_short["segments"][0]["text"]) < 0.3
    assert len(out_long["segments"]) == 2 and all(wer(SAID, s["text"]) < 0.3 for s in out_long["segments"])
    assert out_long["segments"][1]["start"] > 590
    assert out_long["metrics"]["audio_seconds"] == pytest.approx(600, abs=0.01)
    # Before: an index table of output samples x filter taps for the whole file (22.7 GiB for 10 min).
    # Now the file is decoded, resampled, segmented and transcribed as it is read.
    print(f"peak RSS: 30 s {peak_short:.0f} MB, 10 min {peak_long:.0f} MB")
    assert peak_long < peak_short + 64, f"30 s: {peak_short:.0f} MB, 10 min: {peak_long:.0f} MB"


def test_resampling_a_long_signal_matches_resampling_it_in_pieces():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(44100 * 7) * 0.1).astype(np.float32)
    whole = resample(x, 44100, 16000)
    from edge_runtime.audio.resample import Resampler

    r = Resampler(44100, 16000)
    pieces = np.concatenate([r.process(x[i:i + 12345]) for i in range(0, x.size, 12345)] + [r.flush()])
    np.testing.assert_array_equal(whole, pieces)


def test_a_wav_cut_short_is_reported(tmp_path, caplog):
    path = tmp_path / "cut.wav"
    sf.write(path, np.zeros(48000 * 4, np.float32), 48000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    audio, info = load_audio(path)
    assert info.missing_seconds == pytest.approx(2.0, abs=0.01)
    assert "cut short" in caplog.text and audio.size == pytest.approx(SR * 2, abs=20)
