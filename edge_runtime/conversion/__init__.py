"""Hugging Face Gemma checkpoints -> GGUF (and back), torch-free.

`convert_checkpoint` writes f32/f16/bf16/q8_0 GGUF files directly and other
llama.cpp types through llama.cpp's quantizer; `unpack_gguf` turns a GGUF
back into a Hugging Face checkpoint folder.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {"ConversionResult": "convert", "convert_checkpoint": "convert", "unpack_gguf": "unpack"}

if TYPE_CHECKING:
    from edge_runtime.conversion.convert import ConversionResult, convert_checkpoint
    from edge_runtime.conversion.unpack import unpack_gguf


def __getattr__(name: str):  # loaded on first use, so the CLI starts without numpy and gguf
    if name in _LAZY:
        return getattr(importlib.import_module(f"edge_runtime.conversion.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'edge_runtime.conversion' has no attribute {name!r}")


__all__ = ["ConversionResult", "convert_checkpoint", "unpack_gguf"]
