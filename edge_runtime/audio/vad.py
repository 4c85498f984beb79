"""Silero VAD (the ONNX model shipped in faster-whisper's assets) via onnxruntime.

The model scores 512 new samples at 16 kHz (32 ms) at a time.  Each call must
be prefixed by the last 64 samples of the previous chunk, and its recurrent
state carried to the next call; without the context the model returns
near-zero probabilities.

Two ONNX interfaces exist: faster-whisper's `silero_vad_v6.onnx` takes
`input` [rows, 576] with LSTM states `h`, `c` [1, 1, 128] (rows are consecutive
chunks, state carried across rows); upstream Silero v5 takes `input`,
`state` [2, 1, 128] and `sr`.  Both are handled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.audio import SAMPLE_RATE
from edge_runtime.errors import AudioError, InvalidArgumentError, ModelNotFoundError

CHUNK = 512  # new samples per call at 16 kHz
CONTEXT = 64  # samples of the previous chunk prefixed to each call
CHUNK_SECONDS = CHUNK / SAMPLE_RATE


def default_vad_path() -> Path:
    """`silero_vad_v6.onnx` inside the installed faster-whisper package."""
    import importlib.util

    spec = importlib.util.find_spec("faster_whisper")  # found, not imported: no CTranslate2 needed for the VAD
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the Silero VAD model ships with faster-whisper, which is not installed: "
            "pip install 'edge-runtime[audio]' (or pass vad_path=)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "assets" / "silero_vad_v6.onnx"
    if not path.is_file():
        raise ModelNotFoundError(f"Silero VAD model not found at {path}; reinstall faster-whisper")
    return path


@dataclass(frozen=True)
class VadSettings:
    path: str | None = None  # default: faster-whisper's assets
    threads: int = 1


class SileroVAD:
    """Stateful speech-probability scorer: `prob = vad(chunk_of_512)`.

    Use as a context manager or call `close()` to free the ONNX session.
    """

    def __init__(self, settings: VadSettings | None = None):
        settings = settings or VadSettings()
        try:
            import onnxruntime
        except ImportError as exc:
            raise AudioError("voice activity detection needs onnxruntime: pip install onnxruntime") from exc
        path = Path(settings.path) if settings.path else default_vad_path()
        if not path.is_file():
            raise ModelNotFoundError(f"VAD model not found: {path}")
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = settings.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 4
        try:
            self._session = onnxruntime.InferenceSession(str(path), sess_options=opts,
                                                         providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise AudioError(f"cannot load VAD model {path}: {exc}") from exc
        names = {i.name for i in self._session.get_inputs()}
        if {"input", "h", "c"} <= names:
            self._kind = "hc"
        elif {"input", "state", "sr"} <= names:
            self._kind = "state"
        else:
            raise AudioError(f"{path} is not a Silero VAD model (inputs {sorted(names)})")
        self.path = path
        self.reset()

    def reset(self) -> None:
        """Start a new stream: zero context and recurrent state."""
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        if self._kind == "hc":
            self._h = np.zeros((1, 1, 128), dtype=np.float32)
            self._c = np.zeros((1, 1, 128), dtype=np.float32)
        else:
            self._state = np.zeros((2, 1, 128), dtype=np.float32)

    def __call__(self, chunk: np.ndarray) -> float:
        """Speech probability of the next 512 samples (16 kHz float32)."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if chunk.size != CHUNK:
            raise InvalidArgumentError(f"VAD chunks are {CHUNK} samples at 16 kHz, got {chunk.size}")
        x = np.concatenate([self._context, chunk])[None, :]
        self._context = chunk[-CONTEXT:].copy()
        if self._kind == "hc":
            prob, self._h, self._c = self._session.run(None, {"input": x, "h": self._h, "c": self._c})
        else:
            prob, self._state = self._session.run(
                None, {"input": x, "state": self._state, "sr": np.array(SAMPLE_RATE, dtype=np.int64)})
        return float(np.asarray(prob).reshape(-1)[0])

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """One probability per 512-sample chunk of `audio` (zero-padded at the end).

        Runs the chunks as one batch where the model allows it; continues the
        current stream state (call `reset()` first for a fresh clip).
        """
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        n = -(-audio.size // CHUNK)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        padded = np.zeros(n * CHUNK, dtype=np.float32)
        padded[: audio.size] = audio
        if self._kind != "hc":
            return np.array([self(c) for c in padded.reshape(n, CHUNK)], dtype=np.float32)
        rows = padded.reshape(n, CHUNK)
        ctx = np.concatenate([self._context[None, :], rows[:-1, -CONTEXT:]], axis=0)
        x = np.concatenate([ctx, rows], axis=1)
        probs = []
        for i in range(0, n, 4096):
            p, self._h, self._c = self._session.run(None, {"input": x[i:i + 4096], "h": self._h, "c": self._c})
            probs.append(np.asarray(p).reshape(-1))
        self._context = rows[-1, -CONTEXT:].copy()
        return np.concatenate(probs).astype(np.float32)

    def close(self) -> None:
        self._session = None

    def __enter__(self) -> "SileroVAD":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
