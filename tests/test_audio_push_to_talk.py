"""Push-to-talk on real audio: a real-time file replay through the Microphone, Silero VAD
and Whisper tiny.en; the talk key driven from other threads (library) or stdin (CLI)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from audio_speech import SR, speak, wer
from edge_runtime.audio.microphone import FileReplaySource, Microphone
from edge_runtime.audio.push_to_talk import PushToTalkTranscriber, TalkButton

sf = pytest.importorskip("soundfile")
pytest.importorskip("faster_whisper")

TEXT = "The train to Paris leaves from platform four."
LEAD, TAIL = 0.5, 3.0  # seconds of silence around the sentence


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    d = tmp_path_factory.mktemp("ptt")
    speech = speak(TEXT, d)
    audio = np.concatenate([np.zeros(int(LEAD * SR)), speech, np.zeros(int(TAIL * SR))]).astype(np.float32)
    path = d / "ptt.wav"
    sf.write(path, audio, SR)
    return path, speech.size / SR


@pytest.fixture(scope="module")
def engine():
    from edge_runtime.audio.engines import create_engine

    eng = create_engine("whisper", "tiny.en", threads=2)
    yield eng
    eng.close()


def test_talk_button_records_presses():
    button = TalkButton()
    assert not button.pressed and button.span_at(time.monotonic()) is None
    assert button.toggle() is True and button.pressed
    pressed = button.span_at(time.monotonic())
    assert pressed is not None and button.released_at(pressed) is None
    button.press()  # already held: no new press
    assert button.toggle() is False and not button.pressed
    released = button.released_at(pressed)
    assert released is not None and button.span_at((pressed + released) / 2) == pressed
    assert button.span_at(released + 1e-3) is None
    button.release()  # already up: nothing changes
    assert button.released_at(pressed) == released and not button.closed
    button.close()
    assert button.closed


def test_one_utterance_per_press_and_none_for_silence(recording, engine):
    path, speech_s = recording
    button = TalkButton()
    button.press()  # held from the first sample
    release_at = LEAD + speech_s + 0.4
    # Released just after the sentence; then a press held over silence only.
    timers = [threading.Timer(release_at, button.release), threading.Timer(release_at + 0.5, button.press),
              threading.Timer(release_at + 1.7, button.release), threading.Timer(release_at + 1.9, button.close)]
    with Microphone(FileReplaySource(path)) as mic:
        for t in timers:
            t.start()
        ptt = PushToTalkTranscriber(mic, engine, button)
        events = list(ptt.run())
    for t in timers:
        t.cancel()
    assert len(events) == 1, events  # the silent press gave nothing, not invented text
    event = events[0]
    assert event.kind == "final" and wer(TEXT, event.text) <= 0.3, event.text
    assert event.start == 0.0 and abs(event.end - release_at) < 0.3
    assert event.latency is not None and 0 < event.latency < 10
    assert ptt.latencies == [event.latency]


def test_key_still_held_when_the_stream_ends(recording, engine):
    path, _ = recording
    button = TalkButton()
    button.press()
    button.close()
    with Microphone(FileReplaySource(path, speed=4.0)) as mic:
        events = list(PushToTalkTranscriber(mic, engine, button).run())
    assert len(events) == 1 and wer(TEXT, events[0].text) <= 0.3
    assert events[0].latency is None  # never released


def test_cli_assistant_push_to_talk(default_model_path, recording):
    path, _ = recording
    base = [sys.executable, "-m", "edge_runtime", "assistant", "--push-to-talk", "--replay", str(path),
            "--max-tokens", "12", "--temperature", "0"]
    # Enter once: recording starts; stdin ends while held, so the whole replay is one utterance.
    proc = subprocess.run(base, input="\n", capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("you: ") and wer(TEXT, lines[0][5:]) <= 0.3, proc.stdout
    assert lines[1].startswith("gemma: ") and len(lines[1]) > len("gemma: ")
    assert "push to talk" in proc.stderr and "1 utterance(s)" in proc.stderr
    # Never pressed: nothing is heard, nothing is answered.
    proc = subprocess.run(base, input="", capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "0 utterance(s)" in proc.stderr
