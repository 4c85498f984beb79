"""edge_runtime: an offline, on-device runtime for Google's Gemma models."""

from edge_runtime.errors import (
    ContextSizeError,
    EdgeRuntimeError,
    InvalidArgumentError,
    InvalidModelError,
    ModelError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from edge_runtime.generate import CancelToken, GenerationResult, GenerationSettings, Stream
from edge_runtime.media import Audio, Image
from edge_runtime.metrics import Metrics
from edge_runtime.model import Model, ModelInfo, load_model
from edge_runtime.settings import RuntimeSettings

__version__ = "0.1.0"

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
