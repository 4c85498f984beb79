"""Gemma 3n vision projector (MobileNetV5): the tensor and metadata mapping (written by `conversion.mmproj`).

mtmd runs Gemma 3n's vision tower (`clip.vision.projector_type = gemma3nv`). The layout is
llama.cpp's converter's (`conversion/gemma.py` Gemma3nVisionAudioModel), checked tensor for
tensor against it (see the one difference below):
- `model.vision_tower.timm_model.blocks.B.S.*` -> `v.blk.B.S.*`; the stem and the MSFA
  adapter -> `v.*` with the same suffixes; the stem's conv bias as `[1, C, 1, 1]`;
- one deliberate difference: the blocks' `layer_scale.gamma` is written `[1, C, 1, 1]` too.
  llama.cpp's converter (this version) writes it 1-D, and mtmd's graph then aborts the
  process (`ggml_mul` cannot broadcast `[C]` over `[W, H, C]`); the values are the same;
- the multimodal embedder -> `mm.embedding`, `mm.hard_emb_norm`, `mm.soft_emb_norm`,
  `mm.input_projection` (always F16, as llama.cpp writes it); the stem stays F32;
- metadata as llama.cpp writes it, placeholders included (block_count 128, patch size
  = image size / 256 tokens).
The audio tower is not written: mtmd does not run it; the runtime runs it from
`convert-mmproj CKPT -o audio.onnx`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gguf

from edge_runtime.conversion.checkpoint import TensorRef, load_json
from edge_runtime.conversion.mmproj import PlannedTensor
from edge_runtime.errors import ConversionError

KIND = "vision"
OUTTYPES = ("f32", "f16")
_TOWER = "model.vision_tower.timm_model."
_EMBEDDER = {
    "model.embed_vision.embedding.weight": "mm.embedding.weight",
    "model.embed_vision.hard_embedding_norm.weight": "mm.hard_emb_norm.weight",
    "model.embed_vision.soft_embedding_norm.weight": "mm.soft_emb_norm.weight",
    "model.embed_vision.embedding_projection.weight": "mm.input_projection.weight",
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_BLOCK_SUFFIXES = {
    "conv_exp.weight", "bn1.weight", "conv_pwl.weight", "bn2.weight", "dw_start.conv.weight", "dw_start.bn.weight",
    "dw_mid.conv.weight", "dw_mid.bn.weight", "pw_exp.conv.weight", "pw_exp.bn.weight", "pw_proj.conv.weight",
    "pw_proj.bn.weight", "layer_scale.gamma", "attn.query.proj.weight", "attn.key.proj.weight",
    "attn.value.proj.weight", "attn.output.proj.weight", "attn.key.down_conv.weight", "attn.key.norm.weight",
    "attn.value.down_conv.weight", "attn.value.norm.weight", "norm.weight",
}
_GLOBAL = {"conv_stem.conv.weight", "conv_stem.conv.bias", "conv_stem.bn.weight", "msfa.ffn.pw_exp.conv.weight",
           "msfa.ffn.pw_exp.bn.weight", "msfa.ffn.pw_proj.conv.weight", "msfa.ffn.pw_proj.bn.weight",
           "msfa.norm.weight"}


@dataclass(frozen=True)
class Gemma3nVisionInfo:
    n_embd_text: int
    hidden_size: int
    feed_forward_length: int
    n_head: int
    image_size: int
    patch_size: int
    eps: float


def read_config(config: dict, config_path: Path) -> Gemma3nVisionInfo | None:
    """The vision tower's settings (None without one), with the values llama.cpp's converter writes."""
    vision = config.get("vision_config")
    if not isinstance(vision, dict) or not vision:
        return None
    processor: dict = {}
    pre = config_path.parent / "preprocessor_config.json"
    if pre.is_file():
        processor = load_json(pre)
        if not isinstance(processor, dict):
            raise ConversionError(f"{pre} is not a JSON object")
    try:
        image_size = int(processor.get("size", {"height": 768})["height"])
        return Gemma3nVisionInfo(
            n_embd_text=int((config.get("text_config") or {})["hidden_size"]),
            hidden_size=int(vision.get("hidden_size", 2048)),
            feed_forward_length=int(vision.get("intermediate_size", 2048)) * 4,
            n_head=int(vision.get("num_attention_heads", 8)),
            image_size=image_size,
            patch_size=image_size // int(processor.get("image_seq_length", 256)),
            eps=float(config.get("layer_norm_eps", 1e-6)),
        )
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise ConversionError(f"{config_path}: invalid Gemma 3n vision settings ({exc})") from None


def gguf_name(hf_name: str) -> str | None:
    if hf_name in _EMBEDDER:
        return _EMBEDDER[hf_name]
    if not hf_name.startswith(_TOWER):
        return None
    name = hf_name[len(_TOWER):]
    match = _BLOCK_RE.match(name)
    if match and match.group(3) in _BLOCK_SUFFIXES:
        return f"v.blk.{match.group(1)}.{match.group(2)}.{match.group(3)}"
    if name in _GLOBAL:
        return f"v.{name}"
    raise ConversionError(f"MobileNetV5 tensor {hf_name} has no llama.cpp counterpart in this runtime's mapping")


def _four_d(name: str) -> bool:
    """Per-channel vectors mtmd multiplies into [W, H, C] maps: stored as [1, C, 1, 1]."""
    return name.endswith(("conv_stem.conv.bias", "layer_scale.gamma"))


def transform(hf_name: str, data: np.ndarray) -> np.ndarray:
    return data.reshape(1, -1, 1, 1) if _four_d(hf_name) else data


def _qtype(name: str, shape: tuple[int, ...], outtype: str) -> gguf.GGMLQuantizationType:
    if "input_projection" in name:
        return gguf.GGMLQuantizationType.F16
    if "stem" in name or len(shape) <= 1 or _four_d(name) or outtype == "f32":
        return gguf.GGMLQuantizationType.F32
    return gguf.GGMLQuantizationType.F16


def plan(tensors: dict[str, TensorRef], info: Gemma3nVisionInfo, src: Path, outtype: str) -> list[PlannedTensor]:
    if outtype not in OUTTYPES:
        raise ConversionError(f"Gemma 3n's vision projector is written as f32 or f16 (llama.cpp's layout), "
                              f"not {outtype}; use --outtype f16")
    out = []
    for hf_name in sorted(tensors):
        name = gguf_name(hf_name)
        if name is None:
            continue
        shape = tuple(tensors[hf_name].shape) or (1,)
        if _four_d(name):
            shape = (1, shape[0], 1, 1)
        out.append(PlannedTensor(hf_name, name, tensors[hf_name], shape, _qtype(name, shape, outtype)))
    names = {p.name for p in out}
    missing = [n for n in ("v.conv_stem.conv.weight", "v.msfa.norm.weight", *_EMBEDDER.values()) if n not in names]
    if missing:
        raise ConversionError(f"{src}: the Gemma 3n vision tower is incomplete: no {', '.join(missing)}")
    return out


def write_metadata(writer: gguf.GGUFWriter, info: Gemma3nVisionInfo) -> None:
    writer.add_vision_projection_dim(info.n_embd_text)
    writer.add_vision_image_size(info.image_size)
    writer.add_vision_patch_size(info.patch_size)
    writer.add_vision_embedding_length(info.hidden_size)
    writer.add_vision_feed_forward_length(info.feed_forward_length)
    writer.add_vision_block_count(128)  # llama.cpp's placeholder: MobileNetV5 blocks are read from the tensors
    writer.add_vision_head_count(info.n_head)
    writer.add_vision_image_mean([0.0, 0.0, 0.0])  # MobileNetV5 takes pixels in [0, 1]
    writer.add_vision_image_std([1.0, 1.0, 1.0])
    writer.add_string("clip.vision.projector_type", "gemma3nv")
    writer.add_vision_attention_layernorm_eps(info.eps)
