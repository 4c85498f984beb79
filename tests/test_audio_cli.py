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


def test_cascade_translation_keeps_the_transcript_and_reports_a_non_translation(default_model_path, utterance):
    """Transcript -> Gemma text runtime. The embedded 270M model is a base model: it echoes the
    instruction instead of translating. The transcript must survive, and the non-translation must be
    reported (exit 1, a reason naming the fix), never printed as the translation."""
    import json

    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "transcribe", str(utterance), "--format", "json",
                           "--translate-to", "French"], capture_output=True, text=True, timeout=600)
    data = json.loads(proc.stdout)
    assert wer(SAID, data["text"]) <= 0.3 and data["segments"][0]["text"] == data["text"]
    assert proc.returncode == 1 and "instruction-tuned" in proc.stderr and "transcript above is kept" in proc.stderr
    assert "echoed the instruction" in data["translation_error"]
    assert "translation" not in data and "translation" not in data["segments"][0]
    assert data["metrics"]["translate_seconds"] > 0


def test_translation_sits_beside_the_transcript():
    from edge_runtime.audio.transcribe import Segment, TranscriptionResult
    from edge_runtime.audio.translate import not_a_translation

    result = TranscriptionResult([Segment(0.0, 1.0, "Good morning.", "Bonjour."),
                                  Segment(1.5, 2.0, "Thank you.", "Merci.")], "whisper")
    data = result.to_dict()
    assert data["text"] == "Good morning. Thank you." and data["translation"] == "Bonjour. Merci."
    assert data["segments"][1] == {"start": 1.5, "end": 2.0, "text": "Thank you.", "translation": "Merci."}
    assert "Good morning.\nBonjour." in result.to_srt()
    assert not_a_translation("Good morning to all of you", "Bonjour à tous") is None
    assert not_a_translation("Hi", "  ") == "its output was empty"
    assert "echoed" in not_a_translation("Hi there", "Translate the following text into French. Hi there")
    assert "unchanged" in not_a_translation("I live in London", "I live in London.")


# Runs the CLI with faster-whisper hidden, as on an installation without the audio extras.
NO_WHISPER = ("import sys, importlib.abc\n"
              "class Block(importlib.abc.MetaPathFinder):\n"
              "    def find_spec(self, name, path, target=None):\n"
              "        if name.split('.')[0] == 'faster_whisper': raise ModuleNotFoundError(name=name)\n"
              "sys.meta_path.insert(0, Block())\n"
              "from edge_runtime.cli import main; sys.exit(main(sys.argv[1:]))\n")


def _without_whisper(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_WHISPER, *args], capture_output=True, text=True, timeout=120)


def test_inputs_are_checked_before_the_speech_engine(tmp_path, utterance):
    # with no speech engine at all, what is reported is the bad input: it was checked first
    proc = _without_whisper("transcribe", str(tmp_path / "nope.wav"))
    assert proc.returncode == 1 and "audio file not found" in proc.stderr
    bad_model = tmp_path / "bad.gguf"
    bad_model.write_text("not a model")
    proc = _without_whisper("transcribe", str(utterance), "--translate-to", "French", "--text-model", str(bad_model))
    assert proc.returncode == 1 and "not a GGUF" in proc.stderr


def test_without_whisper_the_message_is_about_whisper(utterance):
    proc = _without_whisper("transcribe", str(utterance))
    assert proc.returncode == 1
    assert "no Whisper is installed" in proc.stderr and "pip install 'edge-runtime[audio]'" in proc.stderr
    assert "needs a Gemma 4 model" not in proc.stderr
