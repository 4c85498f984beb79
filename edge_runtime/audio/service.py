"""One speech engine shared by several callers (the server's audio endpoints): loaded on first use, one
transcription at a time, audio given as bytes of any file format the decoder reads."""

from __future__ import annotations

import tempfile
import threading
from typing import Any

from edge_runtime.audio.transcribe import TranscribeSettings, TranscriptionResult, transcribe


class SpeechService:
    """`service.transcribe(data, task=..., language=...)` from any thread; `close()` frees the engine."""

    def __init__(self, engine: str = "auto", model: str | None = None, **options: Any) -> None:
        self.engine_name, self.model, self.options = engine, model, options
        self._engine = None
        self._lock = threading.Lock()

    def _get(self):
        if self._engine is None:
            from edge_runtime.audio.engines import choose_engine, create_engine

            name = self.engine_name if self.engine_name != "auto" else choose_engine(self.model)
            self._engine = create_engine(name, self.model, **self.options)
        return self._engine

    def transcribe(self, data: bytes, *, task: str = "transcribe", language: str | None = None,
                   suffix: str = "") -> TranscriptionResult:
        """Decode `data` (WAV, MP3, FLAC, OGG, ...) and transcribe or translate it to English."""
        with tempfile.NamedTemporaryFile(suffix=suffix or ".audio") as f:  # the decoder reads files
            f.write(data)
            f.flush()
            with self._lock:
                return transcribe(f.name, self._get(), settings=TranscribeSettings(language=language, task=task))

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None


__all__ = ["SpeechService"]
