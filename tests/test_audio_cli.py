"""Audio CLI wiring: lazy optional imports, cascade translation and the assistant
on the real default Gemma model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from audio_speech import SR, speak, wer

sf = pytest.importorskip("soundfile")

SAID = "Hello, my name is John and I live in London."


def test_cli_module_imports_no_optional_dependency():
    code = (
        "import sys, edge_runtime.cli as c; c.build_parser(); "
        "bad = [m for m in ('sounddevice', 'soundfile', 'onnxruntime', 'faster_whisper', 'av') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help_lists_the_audio_commands():
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert all(cmd in proc.stdout for cmd in ("transcribe", "listen", "assistant"))


@pytest.fixture(scope="module")
def utterance(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    audio = np.concatenate([np.zeros(SR // 2), speak(SAID, d), np.zeros(SR)])
    path = d / "question.wav"
    sf.write(path, audio.astype(np.float32), SR)
    return path


def test_cascade_translation_runs_on_the_default_model(default_model_path, utterance):
    """Transcript -> Gemma text runtime. The embedded 270M model is a base model, so only the
    plumbing is asserted: a JSON result whose segment text came from Gemma, with the timing kept."""
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "transcribe", str(utterance), "--format", "json",
                           "--translate-to", "French"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    import json

    data = json.loads(proc.stdout)
    assert data["metrics"]["translated_to"] == "French" and len(data["segments"]) == 1
    assert data["segments"][0]["text"].strip() and data["metrics"]["translate_seconds"] > 0


def test_assistant_replies_to_replayed_speech(default_model_path, utterance):
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "assistant", "--replay", str(utterance),
                           "--max-tokens", "16", "--temperature", "0"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("you: ") and wer(SAID, lines[0][5:]) <= 0.3, lines[0]
    assert lines[1].startswith("gemma: ") and len(lines[1]) > len("gemma: ")
