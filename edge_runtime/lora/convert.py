"""PEFT LoRA adapter -> GGUF LoRA adapter (llama.cpp's format), torch-free and offline.

The base (a local checkpoint folder or a GGUF) gives the architecture and every
adapted weight's shape, so a mismatch is caught here, not by llama.cpp. Names go
through the model converter's own table. llama.cpp scales an adapter by
`adapter.lora.alpha / r` with r read from each B: where PEFT's scale differs
(rsLoRA's alpha / sqrt(r), a module's own `alpha_pattern` entry) the ratio is
folded into that module's B, so the product is PEFT's exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from edge_runtime.conversion.checkpoint import Checkpoint
from edge_runtime.conversion.gemma import gguf_arch, layer_tensor_name
from edge_runtime.conversion.writer import Q, TensorToWrite, atomic_path, write_gguf
from edge_runtime.errors import ConversionError
from edge_runtime.lora.peft import LoraPair, read_adapter

OUTTYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}


@dataclass
class LoraConversion:
    path: Path
    architecture: str
    tensors: int  # adapted modules
    rank: int
    alpha: float
    rslora: bool

    def as_dict(self) -> dict:
        return {"path": str(self.path), "architecture": self.architecture, "modules": self.tensors,
                "rank": self.rank, "alpha": self.alpha, "rslora": self.rslora}


def base_shapes(base: str | os.PathLike[str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """(GGUF architecture, {GGUF weight name: (out, in)}) of a base checkpoint folder or GGUF."""
    base = Path(base)
    if base.is_dir():
        with Checkpoint(base) as ckpt:
            arch = gguf_arch(ckpt)
            shapes = {}
            for name, ref in ckpt.tensors.items():
                gname = layer_tensor_name(name)
                if gname and len(ref.shape) == 2:
                    shapes[gname] = (ref.shape[0], ref.shape[1])
            return arch, shapes
    from edge_runtime.gguf_file import read_header

    header = read_header(base)
    if header.metadata.get("general.type") == "adapter":
        raise ConversionError(f"{base} is itself an adapter; --base takes the model (checkpoint folder or GGUF)")
    return header.architecture, {t.name: (t.shape[1], t.shape[0]) for t in header.tensors if len(t.shape) == 2}


def _qtype(outtype: Q, row: int) -> Q:
    if outtype == Q.Q8_0 and row % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        return Q.F16  # rows shorter than a block (B's rows are r long) stay f16, as llama.cpp's converter does
    return outtype


def convert_lora(adapter_dir: str | os.PathLike[str], base: str | os.PathLike[str], out: str | os.PathLike[str],
                 outtype: str = "f32", *, progress: bool = True) -> LoraConversion:
    """Write `adapter_dir` (PEFT) as a GGUF LoRA adapter for `base` at `out` (atomically)."""
    if outtype not in OUTTYPES:
        raise ConversionError(f"--outtype {outtype} is not one of {', '.join(OUTTYPES)}")
    arch, shapes = base_shapes(base)
    adapter = read_adapter(adapter_dir)
    try:
        tensors = []
        for pair in adapter.pairs:
            gname = layer_tensor_name(pair.module + ".weight")
            if gname is None:
                raise ConversionError(f"{adapter.path}: {pair.module} is not a projection llama.cpp can adapt "
                                      "(q/k/v/o_proj, gate/up/down_proj); leave it out of target_modules")
            if gname not in shapes:
                raise ConversionError(f"{adapter.path}: {pair.module} ({gname}) is not in the base {base}: the adapter "
                                      "was trained for another model")
            out_dim, in_dim = shapes[gname]
            if pair.a.shape[1] != in_dim or pair.b.shape[0] != out_dim:
                raise ConversionError(
                    f"{adapter.path}: {pair.module} adapts a {pair.b.shape[0]}x{pair.a.shape[1]} weight, but the base's "
                    f"{gname} is {out_dim}x{in_dim}: the adapter was trained for another model")
            tensors += _pair_tensors(pair, gname, adapter.alpha, OUTTYPES[outtype])
        name = Path(adapter_dir).resolve().name

        def kv(writer: gguf.GGUFWriter) -> None:
            writer.add_string("general.type", "adapter")
            writer.add_string("general.name", name)
            writer.add_string("adapter.type", "lora")
            writer.add_float32("adapter.lora.alpha", adapter.alpha)

        out = Path(out)
        with atomic_path(out) as tmp:
            write_gguf(tmp, arch, kv, tensors, progress=progress, desc="writing adapter")
        return LoraConversion(out, arch, len(adapter.pairs), adapter.rank, adapter.alpha,
                              bool(adapter.config.get("use_rslora")))
    finally:
        adapter.close()


def _pair_tensors(pair: LoraPair, gname: str, alpha: float, outtype: Q) -> list[TensorToWrite]:
    # llama.cpp applies alpha / r (r = this B's rank); PEFT applies pair.scale: fold the ratio into B.
    fold = pair.scale * pair.rank / alpha

    def load_b():
        b = pair.b.to_f32()
        return b * np.float32(fold) if fold != 1.0 else b

    return [
        TensorToWrite(f"{gname}.lora_a", pair.a.shape, _qtype(outtype, pair.a.shape[1]), pair.a.to_f32),
        TensorToWrite(f"{gname}.lora_b", pair.b.shape, _qtype(outtype, pair.b.shape[1]), load_b),
    ]
