"""edge_runtime: an offline, on-device runtime for Google's Gemma models."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edge_runtime.errors import (
    ContextSizeError,
    EdgeRuntimeError,
    InvalidArgumentError,
    InvalidModelError,
    ModelError,
    ModelNotFoundError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

# Loaded on first use, so commands that never touch llama.cpp (list, pull, rpc-worker --new-key, ...) start
# in a few milliseconds instead of loading llama.cpp's libraries first.
_LAZY = {
    "CancelToken": "edge_runtime.generate", "GenerationResult": "edge_runtime.generate",
    "GenerationSettings": "edge_runtime.generate", "Stream": "edge_runtime.generate",
    "Audio": "edge_runtime.media", "Image": "edge_runtime.media", "Metrics": "edge_runtime.metrics",
    "Model": "edge_runtime.model", "ModelInfo": "edge_runtime.model", "load_model": "edge_runtime.model",
    "RuntimeSettings": "edge_runtime.settings",
}

if TYPE_CHECKING:
    from edge_runtime.generate import CancelToken, GenerationResult, GenerationSettings, Stream
    from edge_runtime.media import Audio, Image
    from edge_runtime.metrics import Metrics
    from edge_runtime.model import Model, ModelInfo, load_model
    from edge_runtime.settings import RuntimeSettings


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edge_runtime' has no attribute {name!r}")


__all__ = [
    "Audio",
    "CancelToken",
    "ContextSizeError",
    "EdgeRuntimeError",
    "GenerationResult",
    "GenerationSettings",
    "Image",
    "InvalidArgumentError",
    "InvalidModelError",
    "Metrics",
    "Model",
    "ModelError",
    "ModelInfo",
    "ModelNotFoundError",
    "RuntimeSettings",
    "Stream",
    "UnsupportedModelError",
    "load_model",
]
