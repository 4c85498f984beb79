"""Live input: FileReplaySource through the Microphone's callback/queue path at
real-time pace, the live transcriber, overflow accounting, and a real
PortAudio device when the machine has one."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import numpy as np
import pytest

from audio_speech import SR, speak, wer
from edge_runtime.audio.microphone import FileReplaySource, Microphone
from edge_runtime.audio.resample import resample
from edge_runtime.errors import AudioError

sf = pytest.importorskip("soundfile")

TEXT = "Can you send me the report by Friday?"


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory):
    """About 4 s at 48 kHz (a typical USB microphone rate): silence, one sentence, silence."""
    d = tmp_path_factory.mktemp("replay")
    speech = speak(TEXT, d)
    audio = np.concatenate([np.zeros(int(0.8 * SR)), speech, np.zeros(int(1.2 * SR))]).astype(np.float32)
    path = d / "utterance48k.wav"
    sf.write(path, resample(audio, SR, 48000), 48000, subtype="FLOAT")
    return path


def test_replay_goes_through_the_callback_queue_and_resampler(replay_file):
    source = FileReplaySource(replay_file)
    assert source.sample_rate == 48000 and source.channels == 1
    with Microphone(source, block_ms=32) as mic:
        chunks = list(mic.chunks())
    got = np.concatenate([c.audio for c in chunks])
    expected = resample(source.frames[:, 0], 48000, SR)
    assert got.size == expected.size
    assert np.max(np.abs(got - expected)) < 1e-5  # streaming == whole-file conversion
    starts = [c.start_sample for c in chunks]
    assert starts == sorted(starts) and starts[0] == 0
    assert mic.overflows == 0 and mic.dropped_blocks == 0


def test_live_transcriber_on_replay(replay_file):
    pytest.importorskip("faster_whisper")
    from edge_runtime.audio.engines import create_engine
    from edge_runtime.audio.live import LiveSettings, LiveTranscriber

    engine = create_engine("whisper", "tiny.en", threads=2)
    try:
        with Microphone(FileReplaySource(replay_file)) as mic:
            live = LiveTranscriber(mic, engine, LiveSettings(partial_interval=1.0))
            events = list(live.run())
    finally:
        engine.close()
    finals = [e for e in events if e.kind == "final"]
    assert len(finals) == 1
    assert wer(TEXT, finals[0].text) <= 0.3, finals[0].text
    assert 0.5 <= finals[0].start <= 1.0
    assert finals[0].latency is not None and finals[0].latency > 0
    assert all(e.kind == "partial" for e in events[:-1])
    assert live.vad_chunks > 100


def test_overflow_is_counted_and_reported(replay_file, caplog):
    """A reader that falls behind loses blocks; they are counted and logged, never silent."""
    source = FileReplaySource(replay_file, speed=50.0)
    mic = Microphone(source, block_ms=32, queue_seconds=0.032)  # room for one block
    with caplog.at_level(logging.WARNING):
        with mic:
            thread = mic._stream._thread
            while thread.is_alive():  # the reader does nothing until the file has played
                time.sleep(0.01)
    total_blocks = -(-source.frames.shape[0] // mic.blocksize)
    assert mic.dropped_blocks == total_blocks - 1
    assert "dropped" in caplog.text


def test_replay_errors(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        FileReplaySource(tmp_path / "nope.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio" * 100)
    with pytest.raises(AudioError, match="cannot decode"):
        FileReplaySource(bad)


def test_cli_listen_replay(replay_file):
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "listen", "--replay", str(replay_file),
                           "--partial-interval", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and wer(TEXT, lines[0].split(")", 1)[1]) <= 0.3, proc.stdout
    assert "1 utterance(s)" in proc.stderr and "overflows 0, dropped blocks 0" in proc.stderr


def test_real_microphone_when_present():
    """Records 0.5 s from the default PortAudio input device, opened at its native rate."""
    from edge_runtime.audio.microphone import SoundDeviceSource, list_input_devices

    try:
        devices = list_input_devices()
    except AudioError as exc:
        pytest.skip(f"PortAudio unavailable: {exc}")
    if not devices:
        with pytest.raises(AudioError, match="no microphone"):
            SoundDeviceSource()
        pytest.skip("no input device on this machine (the clear 'no microphone' error was checked)")
    source = SoundDeviceSource()
    received = 0
    with Microphone(source) as mic:
        while received < SR // 2:
            chunk = mic.read(timeout=5.0)
            assert chunk is not None, "the device delivered no audio for 5 s"
            received += chunk.audio.size
    assert mic.dropped_blocks == 0


def test_missing_portaudio_is_a_clear_error():
    """sounddevice raises OSError when it cannot find libportaudio; the CLI says what to install.
    (The library is hidden from ctypes in a child process; sounddevice itself is real.)"""
    code = ("import ctypes.util, sys; ctypes.util.find_library = lambda name: None; "
            "from edge_runtime.cli import main; sys.exit(main(['listen', '--list-devices']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "libportaudio2" in proc.stderr
