"""PEFT LoRA adapters on disk: `adapter_config.json` + `adapter_model.safetensors`, read without torch.

Each adapted module holds A (r x in) and B (out x r); PEFT adds
scale * B @ A to the module's weight, with scale = alpha / r, or alpha / sqrt(r)
under rsLoRA, where `rank_pattern` / `alpha_pattern` may give a module its own r
and alpha. Tensor names are PEFT's: `base_model.model.<module>.lora_A.weight`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.conversion.checkpoint import Shard, TensorRef, load_json
from edge_runtime.errors import ConversionError

_NAME = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])(?:\.default)?\.weight$")


@dataclass
class LoraPair:
    """One adapted module: its A and B and the scale PEFT applies."""

    module: str  # e.g. model.layers.0.self_attn.q_proj
    a: TensorRef
    b: TensorRef
    scale: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass
class PeftAdapter:
    path: Path
    config: dict
    alpha: float
    rank: int
    pairs: list[LoraPair] = field(default_factory=list)
    shard: Shard | None = None

    def close(self) -> None:
        if self.shard is not None:
            self.shard.close()


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches the end of the module name."""
    for key, value in patterns.items():
        if re.search(rf"(^|\.){re.escape(key)}$", module) or re.fullmatch(key, module):
            return float(value)
    return default


def read_adapter(directory: str | Path) -> PeftAdapter:
    """Read a PEFT LoRA adapter folder; anything llama.cpp cannot apply is refused with what to do."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConversionError(f"{directory}: not a folder; give the folder PEFT's save_pretrained wrote "
                              "(adapter_config.json and adapter_model.safetensors)")
    config = load_json(directory / "adapter_config.json")
    kind = config.get("peft_type", "LORA")
    if kind != "LORA":
        raise ConversionError(f"{directory}: a {kind} adapter; only LoRA adapters can be converted")
    if config.get("use_dora"):
        raise ConversionError(f"{directory}: a DoRA adapter (use_dora): llama.cpp cannot apply its magnitude "
                              "vectors; merge it into the model with PEFT (merge_and_unload) and convert the result")
    saved = config.get("modules_to_save") or []
    if saved:
        raise ConversionError(f"{directory}: the adapter carries full copies of {', '.join(saved)} (modules_to_save), "
                              "which a LoRA GGUF cannot hold; merge it with PEFT (merge_and_unload) and convert that")
    weights = directory / "adapter_model.safetensors"
    if not weights.exists():
        hint = " (adapter_model.bin is torch's pickle format: re-save with safe_serialization=True)" \
            if (directory / "adapter_model.bin").exists() else ""
        raise ConversionError(f"{weights}: file is missing{hint}")
    rank = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", rank))
    rs = bool(config.get("use_rslora"))
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    shard = Shard.open(weights)
    adapter = PeftAdapter(directory, config, alpha, rank, shard=shard)
    halves: dict[str, dict[str, TensorRef]] = {}
    try:
        for name, ref in shard.tensors.items():
            m = _NAME.match(name)
            if m is None:
                raise ConversionError(f"{weights}: tensor {name} is not a LoRA A or B matrix (embedding LoRA, "
                                      "biases and full weights cannot be applied by llama.cpp); train without them")
            halves.setdefault(m["module"], {})[m["part"]] = ref
        for module, parts in sorted(halves.items()):
            if set(parts) != {"A", "B"}:
                raise ConversionError(f"{weights}: {module} has lora_{''.join(parts)} but not both A and B")
            a, b = parts["A"], parts["B"]
            if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
                raise ConversionError(f"{weights}: {module}: A {list(a.shape)} and B {list(b.shape)} are not a LoRA pair")
            if module.endswith(("embed_tokens", "lm_head")):
                raise ConversionError(f"{weights}: {module} is adapted; llama.cpp applies LoRA to the layers' "
                                      "projections only (Gemma's output shares the embeddings): leave it out of "
                                      "target_modules")
            r = _pattern_value(rank_pattern, module, rank)
            if int(r) != a.shape[0]:
                raise ConversionError(f"{weights}: {module} has rank {a.shape[0]} but the config says {int(r)}")
            mod_alpha = _pattern_value(alpha_pattern, module, alpha)
            scale = mod_alpha / (math.sqrt(r) if rs else r)
            adapter.pairs.append(LoraPair(module, a, b, scale))
    except BaseException:
        shard.close()
        raise
    if not adapter.pairs:
        shard.close()
        raise ConversionError(f"{weights}: no LoRA tensors")
    return adapter
