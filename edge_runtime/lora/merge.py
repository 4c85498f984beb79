"""Merging LoRA adapters into a checkpoint's weights while it is converted (`convert --lora`).

W' = W + scale * s * B @ A in the checkpoint's (out, in) layout, s being PEFT's own
scale for the module (alpha / r, rsLoRA's alpha / sqrt(r), `alpha_pattern`) and
scale the user's. Only the adapted projections change; norms, embeddings and the
metadata (sliding-window layer pattern included) are the base's.
"""

from __future__ import annotations

import contextlib
import os
from typing import Sequence

import numpy as np

from edge_runtime.conversion.checkpoint import bf16_to_f32
from edge_runtime.conversion.gemma import ModelPlan, layer_tensor_name
from edge_runtime.errors import ConversionError
from edge_runtime.lora.peft import LoraPair, read_adapter


def merge_into_plan(plan: ModelPlan, adapters: Sequence[tuple[str | os.PathLike[str], float]],
                    stack: contextlib.ExitStack) -> int:
    """Wrap the loaders of every adapted tensor of `plan`; the adapters stay open on `stack`.
    Returns the number of merged modules."""
    planned = {t.name: t for t in plan.tensors}
    merged = 0
    for folder, scale in adapters:
        adapter = read_adapter(folder)
        stack.callback(adapter.close)
        for pair in adapter.pairs:
            gname = layer_tensor_name(pair.module + ".weight")
            target = planned.get(gname) if gname else None
            if target is None:
                raise ConversionError(f"{adapter.path}: {pair.module} is not a projection of this checkpoint: the "
                                      "adapter was trained for another model")
            if target.shape != (pair.b.shape[0], pair.a.shape[1]):
                raise ConversionError(f"{adapter.path}: {pair.module} adapts a {pair.b.shape[0]}x{pair.a.shape[1]} "
                                      f"weight, the checkpoint's is {target.shape[0]}x{target.shape[1]}: the adapter "
                                      "was trained for another model")
            target.load = _merged(target.load, pair, scale)
            merged += 1
    return merged


def _merged(load, pair: LoraPair, scale: float):
    def run() -> np.ndarray:
        w = load()
        w = bf16_to_f32(w) if w.dtype == np.uint16 else np.array(w, dtype=np.float32)
        w += np.float32(scale * pair.scale) * (pair.b.to_f32() @ pair.a.to_f32())
        return w

    return run
