"""Gemma 4 vision projector: the tensor and metadata mapping (written by `conversion.mmproj`).

The vision half of llama.cpp's projector for Gemma 4 (`clip.vision.projector_type = gemma4v`),
written into the same mmproj file as the audio half (`mmproj_audio.py`) when the checkpoint
has both, as llama.cpp's converter does (`conversion/gemma.py` Gemma4VisionAudioModel):
- `model.vision_tower.encoder.layers.N.*` -> `v.blk.N.*`, `.linear.` dropped;
- the patch embedder's Linear `[n_embd, ps*ps*3]` as a conv kernel `[n_embd, 3, ps, ps]`;
- the position table `[2, positions, n_embd]` kept F32, as are norms;
- `model.embed_vision.embedding_projection` -> `mm.input_projection`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gguf

from edge_runtime.conversion.checkpoint import TensorRef, load_json
from edge_runtime.conversion.mmproj import PlannedTensor, weight_type
from edge_runtime.errors import ConversionError

KIND = "vision"
_PREFIX = "model.vision_tower."
_LAYER_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "input_layernorm": "ln1",
    "pre_feedforward_layernorm": "ln2",
    "post_attention_layernorm": "attn_post_norm",
    "post_feedforward_layernorm": "ffn_post_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_out",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_CLAMP_SUFFIXES = ("input_min", "input_max", "output_min", "output_max")
_PROCESSOR_DEFAULTS = {"image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}  # Gemma4ImageProcessor's


@dataclass(frozen=True)
class Gemma4VisionInfo:
    n_embd_text: int
    hidden_size: int
    intermediate_size: int
    n_layer: int
    n_head: int
    patch_size: int
    eps: float
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]


def read_config(config: dict, config_path: Path) -> Gemma4VisionInfo | None:
    """The vision tower's settings, None when the checkpoint has none."""
    vision = config.get("vision_config")
    if not isinstance(vision, dict) or not vision:
        return None
    text = config.get("text_config") or {}
    processor = dict(_PROCESSOR_DEFAULTS)
    pre = config_path.parent / "preprocessor_config.json"
    if pre.is_file():
        loaded = load_json(pre)
        if not isinstance(loaded, dict):
            raise ConversionError(f"{pre} is not a JSON object")
        processor.update({k: loaded[k] for k in _PROCESSOR_DEFAULTS if k in loaded})
    try:
        return Gemma4VisionInfo(
            n_embd_text=int(text.get("hidden_size", config.get("hidden_size"))),
            hidden_size=int(vision["hidden_size"]),
            intermediate_size=int(vision["intermediate_size"]),
            n_layer=int(vision["num_hidden_layers"]),
            n_head=int(vision["num_attention_heads"]),
            patch_size=int(vision.get("patch_size", 16)),
            eps=float(vision.get("layer_norm_eps", 1e-6)),  # what llama.cpp's converter writes
            image_mean=tuple(float(v) for v in processor["image_mean"]),
            image_std=tuple(float(v) for v in processor["image_std"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConversionError(f"{config_path}: invalid vision settings ({exc})") from None


def gguf_name(hf_name: str) -> str | None:
    """The GGUF name of one HF vision tensor; None for tensors that are not the vision tower's."""
    if hf_name == "model.embed_vision.embedding_projection.weight":
        return "mm.input_projection.weight"
    if not hf_name.startswith(_PREFIX):
        return None
    name = hf_name[len(_PREFIX):].replace(".linear.", ".")
    if name == "patch_embedder.input_proj.weight":
        return "v.patch_embd.weight"
    if name == "patch_embedder.position_embedding_table":
        return "v.position_embd.weight"
    base, _, suffix = name.rpartition(".")
    match = _LAYER_RE.match(base)
    if match and suffix in ("weight", "bias") + _CLAMP_SUFFIXES:
        mapped = _LAYER_NAMES.get(match.group(2))
        if mapped:
            return f"v.blk.{match.group(1)}.{mapped}.{suffix}"
    raise ConversionError(f"Gemma 4 vision tensor {hf_name} has no llama.cpp counterpart in this runtime's mapping")


def transform(hf_name: str, data: np.ndarray) -> np.ndarray:
    if data.ndim == 0:
        return data.reshape(1)
    if hf_name.endswith("patch_embedder.input_proj.weight"):
        n_embd, flat = data.shape
        ps = int(round((flat // 3) ** 0.5))
        return np.ascontiguousarray(data.reshape(n_embd, ps, ps, 3).transpose(0, 3, 1, 2))
    return data


def plan(tensors: dict[str, TensorRef], info: Gemma4VisionInfo, src: Path, outtype: str) -> list[PlannedTensor]:
    out = []
    for hf_name in sorted(tensors):
        name = gguf_name(hf_name)
        if name is None:
            continue
        ref = tensors[hf_name]
        shape = tuple(ref.shape) or (1,)
        if name == "v.patch_embd.weight":
            ps = info.patch_size
            shape = (shape[0], 3, ps, ps)
        keep_f32 = name == "v.position_embd.weight"
        out.append(PlannedTensor(hf_name, name, ref, shape, weight_type(shape, "f32" if keep_f32 else outtype)))
    names = {p.name for p in out}
    for need in ("v.patch_embd.weight", "v.position_embd.weight", "mm.input_projection.weight"):
        if need not in names:
            raise ConversionError(f"{src}: the Gemma 4 vision tower has no tensor for {need}")
    for i in range(info.n_layer):
        if f"v.blk.{i}.attn_q.weight" not in names:
            raise ConversionError(f"{src}: vision layer {i} of {info.n_layer} (config.json) has no tensors")
    return out


def write_metadata(writer: gguf.GGUFWriter, info: Gemma4VisionInfo) -> None:
    writer.add_vision_projection_dim(info.n_embd_text)
    writer.add_vision_image_size(224)  # unused by gemma4v (images keep their aspect); llama.cpp writes 224
    writer.add_vision_patch_size(info.patch_size)
    writer.add_vision_embedding_length(info.hidden_size)
    writer.add_vision_feed_forward_length(info.intermediate_size)
    writer.add_vision_block_count(info.n_layer)
    writer.add_vision_head_count(info.n_head)
    writer.add_vision_image_mean(list(info.image_mean))
    writer.add_vision_image_std(list(info.image_std))
    writer.add_string("clip.vision.projector_type", "gemma4v")
    writer.add_vision_attention_layernorm_eps(info.eps)
