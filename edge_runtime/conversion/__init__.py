"""Hugging Face Gemma checkpoints -> GGUF (and back), torch-free.

`convert_checkpoint` writes f32/f16/bf16/q8_0 GGUF files directly and other
llama.cpp types through llama.cpp's quantizer; `unpack_gguf` turns a GGUF
back into a Hugging Face checkpoint folder.
"""

from __future__ import annotations

from edge_runtime.conversion.convert import ConversionResult, convert_checkpoint
from edge_runtime.conversion.unpack import unpack_gguf

__all__ = ["ConversionResult", "convert_checkpoint", "unpack_gguf"]
