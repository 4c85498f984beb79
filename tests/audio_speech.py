"""Test speech for the audio tests: espeak-ng sentences joined with silences and noise.

Every clip records where its speech really is (the synthesized voice's own
leading and trailing quiet trimmed by energy), so tests can compare the VAD's
segments with known boundaries.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

SR = 16000

SENTENCES = [
    "Hello, my name is John and I live in London.",
    "The meeting starts at nine o'clock tomorrow morning.",
    "Can you send me the report by Friday?",
]
VOICE, SPEED = "en-us", "150"  # espeak-ng's en-us at 150 wpm is what Whisper tiny.en reads best
GAPS = [1.0, 1.5, 1.2, 1.0]  # silence before, between and after the sentences (seconds)
NOISE_DBFS = -50.0  # white noise under everything


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install -y espeak-ng sox)")
    return path


def speak(text: str, workdir: Path) -> np.ndarray:
    """espeak-ng speech resampled to 16 kHz mono by sox."""
    need("espeak-ng")
    need("sox")
    raw = workdir / "raw.wav"
    out = workdir / "speech16k.wav"
    subprocess.run([need("espeak-ng"), "-v", VOICE, "-s", SPEED, "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run([need("sox"), str(raw), "-r", str(SR), "-c", "1", "-b", "16", str(out)], check=True,
                   capture_output=True)
    import soundfile as sf

    data, rate = sf.read(str(out), dtype="float32")
    assert rate == SR
    return data


def speech_extent(audio: np.ndarray) -> tuple[int, int]:
    """First and last sample of speech: 10 ms frames within 40 dB of the loudest."""
    frame = SR // 100
    n = len(audio) // frame
    rms = np.sqrt((audio[: n * frame].reshape(n, frame) ** 2).mean(axis=1) + 1e-12)
    loud = np.nonzero(rms > rms.max() * 10 ** (-40 / 20))[0]
    return int(loud[0] * frame), int((loud[-1] + 1) * frame)


@dataclass
class Recording:
    audio: np.ndarray  # 16 kHz mono float32
    speech: list[tuple[float, float]]  # true speech spans in seconds
    texts: list[str]


def build_recording(workdir: Path, sentences=SENTENCES, gaps=GAPS, noise_dbfs=NOISE_DBFS, seed=0) -> Recording:
    parts, spans, pos = [], [], 0
    for i, text in enumerate(sentences):
        gap = np.zeros(int(gaps[i] * SR), dtype=np.float32)
        parts.append(gap)
        pos += gap.size
        clip = speak(text, workdir)
        a, b = speech_extent(clip)
        spans.append(((pos + a) / SR, (pos + b) / SR))
        parts.append(clip)
        pos += clip.size
    parts.append(np.zeros(int(gaps[len(sentences)] * SR), dtype=np.float32))
    audio = np.concatenate(parts)
    rng = np.random.default_rng(seed)
    audio = audio + rng.standard_normal(audio.size).astype(np.float32) * 10 ** (noise_dbfs / 20)
    return Recording(audio.astype(np.float32), spans, list(sentences))


NUMBERS = dict(enumerate("zero one two three four five six seven eight nine ten eleven twelve".split()))


def words(text: str) -> list[str]:
    """Lower-case words without punctuation; 0-12 written as words ("9" == "nine")."""
    out = re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()
    return [NUMBERS.get(int(w), w) if w.isdigit() else w for w in out]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level Levenshtein distance / reference length."""
    ref, hyp = words(reference), words(hypothesis)
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)] / max(1, len(ref))
