"""The package's one exception hierarchy.

Every error raised on purpose by edge_runtime derives from `EdgeRuntimeError`
and carries a message that names the problem and how to fix it.
"""

from __future__ import annotations


class EdgeRuntimeError(Exception):
    """Base class of every error edge_runtime raises on purpose."""


class ModelError(EdgeRuntimeError):
    """A model file cannot be used."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """The model file does not exist."""


class InvalidModelError(ModelError):
    """The file is not a GGUF, or it is truncated or corrupt."""


class UnsupportedModelError(ModelError):
    """A valid GGUF whose architecture or features this runtime cannot run."""


class UnsupportedBuildError(EdgeRuntimeError):
    """The installed llama.cpp was built for instructions this CPU does not have."""


class ContextSizeError(EdgeRuntimeError, ValueError):
    """A requested context window the model or the prompt cannot satisfy."""


class InvalidArgumentError(EdgeRuntimeError, ValueError):
    """A setting or argument with a value that cannot work."""


class GenerationError(EdgeRuntimeError):
    """llama.cpp failed while evaluating or sampling."""


class ToolCallError(EdgeRuntimeError):
    """A tool definition or a model's tool call that cannot be used."""


class ConversionError(EdgeRuntimeError):
    """A checkpoint cannot be converted (bad input, disk full, ...)."""


class AudioError(EdgeRuntimeError):
    """Audio input or an audio engine cannot be used."""


class RpcError(EdgeRuntimeError):
    """An RPC worker cannot be used: unreachable, another protocol version, a wrong key, or lost mid-run."""


class PullError(EdgeRuntimeError):
    """A model cannot be fetched: not on the Hub, gated, offline, or corrupted in transit."""
