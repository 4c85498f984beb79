"""Live audio in: PortAudio microphones through sounddevice, or a file replayed
at real-time pace through the very same callback and queue.

A *source* knows its native rate and channels and opens a stream object with
the sounddevice `InputStream` shape (`start`, `stop`, `close`, a
`callback(indata, frames, time, status)`).  `Microphone` owns the callback
(it only copies into a bounded queue and counts overflows) and hands out
16 kHz mono chunks, resampling from the native rate on the reading side.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from edge_runtime.audio import SAMPLE_RATE
from edge_runtime.audio.resample import Resampler
from edge_runtime.errors import AudioError, InvalidArgumentError

log = logging.getLogger(__name__)

Callback = Callable[[np.ndarray, int, Any, Any], None]


def _sounddevice():
    try:
        import sounddevice
    except ImportError as exc:
        raise AudioError("microphone input needs sounddevice: pip install sounddevice") from exc
    except OSError as exc:  # sounddevice raises OSError when libportaudio is absent
        raise AudioError(
            "the PortAudio library is not installed (Debian/Raspberry Pi OS: apt-get install libportaudio2)"
        ) from exc
    return sounddevice


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_samplerate: int
    is_default: bool


def list_input_devices() -> list[InputDevice]:
    """Every device that can record, as PortAudio reports it."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        default_in = sd.default.device[0]
    except Exception as exc:
        raise AudioError(f"cannot list audio devices: {exc}") from exc
    return [
        InputDevice(i, d["name"], int(d["max_input_channels"]), int(d["default_samplerate"]), i == default_in)
        for i, d in enumerate(devices) if d["max_input_channels"] > 0
    ]


def find_device(spec: int | str | None = None) -> InputDevice:
    """The default input device, or one by index or (part of its) name."""
    devices = list_input_devices()
    if not devices:
        raise AudioError("no microphone found: PortAudio reports no input device")
    if spec is None:
        return next((d for d in devices if d.is_default), devices[0])
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        for d in devices:
            if d.index == int(spec):
                return d
        raise AudioError(f"no input device with index {spec}; see `edge-runtime listen --list-devices`")
    matches = [d for d in devices if str(spec).lower() in d.name.lower()]
    if len(matches) != 1:
        what = "no" if not matches else "more than one"
        raise AudioError(f"{what} input device matches {spec!r}; see `edge-runtime listen --list-devices`")
    return matches[0]


class AudioSource(Protocol):
    name: str
    sample_rate: int  # native rate the stream runs at
    channels: int

    def open_stream(self, callback: Callback, blocksize: int, finished: Callable[[], None]) -> Any:
        """A stream with start/stop/close that calls `callback` from its own thread."""
        ...


class SoundDeviceSource:
    """A PortAudio input device, opened at its native rate (USB mics often refuse 16 kHz)."""

    FALLBACK_RATES = (48000, 44100, 32000, 16000)

    def __init__(self, device: int | str | None = None, *, sample_rate: int | None = None, channels: int = 1):
        self.device = find_device(device)
        self.name = self.device.name
        if channels < 1 or channels > self.device.channels:
            raise InvalidArgumentError(f"{self.name} records 1 to {self.device.channels} channels, not {channels}")
        self.channels = channels
        self.sample_rate = int(sample_rate) if sample_rate else self._supported_rate()

    def _supported_rate(self) -> int:
        """The device's native rate, or the first common rate it accepts."""
        sd = _sounddevice()
        tried = []
        for rate in dict.fromkeys((self.device.default_samplerate, *self.FALLBACK_RATES)):
            try:
                sd.check_input_settings(device=self.device.index, samplerate=rate, channels=self.channels,
                                        dtype="float32")
                return int(rate)
            except Exception as exc:
                tried.append(f"{rate} Hz: {exc}")
        raise AudioError(f"{self.name} accepts none of the usual sample rates ({'; '.join(tried)})")

    def open_stream(self, callback: Callback, blocksize: int, finished: Callable[[], None]) -> Any:
        sd = _sounddevice()
        try:
            return sd.InputStream(device=self.device.index, samplerate=self.sample_rate, channels=self.channels,
                                  dtype="float32", blocksize=blocksize, callback=callback,
                                  finished_callback=finished)
        except Exception as exc:  # PortAudioError: e.g. -9997 invalid sample rate
            raise AudioError(f"cannot open {self.name} at {self.sample_rate} Hz, {self.channels} ch: {exc}") from exc


@dataclass
class _ReplayStatus:
    input_overflow: bool = False

    def __bool__(self) -> bool:
        return self.input_overflow


class _ReplayStream:
    """Plays frames to `callback` in blocks, one block per block-duration of wall time."""

    def __init__(self, frames: np.ndarray, rate: int, callback: Callback, blocksize: int,
                 finished: Callable[[], None], speed: float):
        self._frames, self._rate, self._callback = frames, rate, callback
        self._blocksize, self._finished, self._speed = blocksize, finished, speed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        try:
            t0 = time.monotonic()
            for k, pos in enumerate(range(0, len(self._frames), self._blocksize)):
                due = t0 + (k + 1) * self._blocksize / self._rate / self._speed  # the block is complete then
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                if self._stop.is_set():
                    break
                block = self._frames[pos:pos + self._blocksize]
                self._callback(block, len(block), None, _ReplayStatus())
        finally:
            self._finished()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="file-replay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def close(self) -> None:
        self.stop()


class FileReplaySource:
    """An audio file played at its own rate and channel count, in real time (speed=1)."""

    def __init__(self, path: str | Path, *, speed: float = 1.0):
        if speed <= 0:
            raise InvalidArgumentError("speed must be positive")
        from edge_runtime.audio.audio import read_frames

        p = Path(path)
        frames, rate = read_frames(p)
        self.name = f"replay:{p.name}"
        self.frames, self.sample_rate, self.channels, self.speed = frames, rate, frames.shape[1], speed

    def open_stream(self, callback: Callback, blocksize: int, finished: Callable[[], None]) -> Any:
        return _ReplayStream(self.frames, self.sample_rate, callback, blocksize, finished, self.speed)


@dataclass
class CapturedChunk:
    """16 kHz mono audio, its position in the stream and when its last sample arrived."""

    audio: np.ndarray
    start_sample: int
    arrived: float  # time.monotonic() of the callback that delivered it


class Microphone:
    """`with Microphone(source) as mic: for chunk in mic.chunks(): ...`

    Overflows (PortAudio's input_overflow flag, or the queue full because the
    reader fell behind) are counted in `overflows` / `dropped_blocks` and
    logged as warnings; nothing is lost silently.
    """

    def __init__(self, source: AudioSource, *, block_ms: int = 32, queue_seconds: float = 10.0):
        self.source = source
        self.blocksize = max(1, int(source.sample_rate * block_ms / 1000))
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(queue_seconds * 1000 / block_ms)))
        self._resampler = Resampler(source.sample_rate, SAMPLE_RATE)
        self.overflows = 0
        self.dropped_blocks = 0
        self._position = 0
        self._stream = None
        self._ended = False
        self._resampler_done = False

    @property
    def backlog(self) -> int:
        """Blocks captured but not yet read: a reader falling behind shows here first."""
        return self._queue.qsize()

    # Runs on the audio thread: copy, enqueue, count; nothing else.
    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if getattr(status, "input_overflow", False):
            self.overflows += 1
        try:
            self._queue.put_nowait((indata.copy(), time.monotonic()))
        except queue.Full:
            self.dropped_blocks += 1

    def _finished(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            self._ended = True  # reader notices once it drains the queue

    def __enter__(self) -> "Microphone":
        self._stream = self.source.open_stream(self._callback, self.blocksize, self._finished)
        try:
            self._stream.start()
        except Exception as exc:
            self._stream.close()
            raise AudioError(f"cannot start audio input from {self.source.name}: {exc}") from exc
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.stop()
            stream.close()
        if self.overflows or self.dropped_blocks:
            log.warning("audio input %s: %d overflow(s), %d block(s) dropped (reader too slow)",
                        self.source.name, self.overflows, self.dropped_blocks)

    def read(self, timeout: float | None = None) -> CapturedChunk | None:
        """The next 16 kHz mono chunk; None at the end of the stream (or on timeout)."""
        while True:
            try:
                item = self._queue.get(timeout=timeout if timeout is not None else 0.5)
            except queue.Empty:
                if self._ended:
                    item = None  # the end marker could not be queued: finish here
                elif timeout is not None:
                    return None
                else:
                    continue
            if item is None:
                if self._resampler_done:
                    return None
                self._resampler_done = True
                tail = self._resampler.flush()
                self._ended = True
                if tail.size:
                    chunk = CapturedChunk(tail, self._position, time.monotonic())
                    self._position += tail.size
                    return chunk
                return None
            data, arrived = item
            mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)
            out = self._resampler.process(mono)
            if out.size == 0:
                continue
            chunk = CapturedChunk(out, self._position, arrived)
            self._position += out.size
            return chunk

    def chunks(self) -> Iterator[CapturedChunk]:
        while not self._ended or not self._queue.empty():
            chunk = self.read()
            if chunk is None:
                if self._ended:
                    return
                continue
            yield chunk
