"""GGUF LoRA adapters at run time: checked against the model before llama.cpp sees them, loaded once,
applied as a set with a scale each.

llama-cpp-python 0.3.36 does not notice a failed adapter load and a wrongly shaped adapter crashes
the process (FIELD-NOTES, "LoRA"), so the file's type, architecture and every tensor's shape are
checked here first.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_runtime.errors import InvalidArgumentError
from edge_runtime.gguf_file import GGUFHeader, read_header


def parse_lora_arg(text: str) -> tuple[str, float]:
    """`FILE[:SCALE]` -> (file, scale); the scale multiplies the adapter's own alpha / r."""
    path, sep, scale = text.rpartition(":")
    if sep and path and not os.path.exists(text):
        try:
            return path, float(scale)
        except ValueError:
            pass
    return text, 1.0


def check_adapter(path: str | os.PathLike[str], model: GGUFHeader) -> GGUFHeader:
    """The adapter's header, once it is known to be a LoRA adapter that fits `model`."""
    path = Path(path)
    if not path.exists():
        raise InvalidArgumentError(f"LoRA adapter {path} does not exist")
    header = read_header(path)
    kind = header.metadata.get("general.type")
    if kind != "adapter" or header.metadata.get("adapter.type") != "lora":
        raise InvalidArgumentError(f"{path} is not a LoRA adapter (general.type {kind!r}); make one from a PEFT "
                                   "folder with `edge-runtime convert-lora ADAPTER_DIR --base MODEL -o adapter.gguf`")
    if header.architecture != model.architecture:
        raise InvalidArgumentError(f"{path} is an adapter for {header.architecture}, but the model is "
                                   f"{model.architecture}")
    weights = {t.name: t.shape for t in model.tensors}
    found = {t.name: t.shape for t in header.tensors}
    for name, shape in found.items():
        base, _, part = name.rpartition(".")
        if part not in ("lora_a", "lora_b") or base not in weights:
            raise InvalidArgumentError(f"{path}: tensor {name} adapts nothing in this model: the adapter was made "
                                       "for another model")
        w = weights[base]  # GGUF order: (in, out)
        other = found.get(f"{base}.lora_b" if part == "lora_a" else f"{base}.lora_a")
        if other is None:
            raise InvalidArgumentError(f"{path}: {base} has {part} without its other half")
        a, b = (shape, other) if part == "lora_a" else (other, shape)
        if a[0] != w[0] or b[1] != w[1] or a[1] != b[0]:
            raise InvalidArgumentError(
                f"{path}: {base} is {w[1]}x{w[0]} in this model but the adapter's A is {a[1]}x{a[0]} and B "
                f"{b[1]}x{b[0]}: the adapter was made for another base model")
    return header
