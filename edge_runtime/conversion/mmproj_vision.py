"""Gemma 3 vision projector: the tensor and metadata mapping (written by `conversion.mmproj`).

The SigLIP vision tower of Gemma3ForConditionalGeneration plus its projector
(`clip.projector_type = gemma3`): mtmd average-pools the patch grid by
`n_merge` per side (4 for every released Gemma 3: 64x64 patches -> 256
tokens), RMS-normalizes and projects into the text model's embedding space.

Contract (llama.cpp `conversion/gemma.py` Gemma3VisionModel, gguf-py's tensor
map for MMPROJ and `tools/mtmd/models/siglip.cpp`):
- `vision_tower.vision_model.*` (or transformers 5's `vision_tower.*`) -> `v.*` by gguf-py's name map; `multi_modal_projector.mm_input_projection_weight`
  -> `mm.input_projection.weight` as stored ([vision, text]); `mm_soft_emb_norm` -> `mm.soft_emb_norm`
  with Gemma's +1 folded in (the SigLIP layer norms are plain and stay as they are);
- embeddings stay F32; the input projection is F16 unless the output is f32;
- `clip.vision.projector.scale_factor` only when the pooling is not 4 (test-sized models).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gguf

from edge_runtime.conversion.checkpoint import TensorRef, load_json
from edge_runtime.conversion.mmproj import PlannedTensor, weight_type
from edge_runtime.errors import ConversionError

KIND = "vision"
DEFAULT_MERGE = 4  # what clip.cpp assumes when the scale factor key is absent


@dataclass(frozen=True)
class VisionProjectorInfo:
    """What the converter reads from config.json (and preprocessor_config.json)."""

    n_embd_text: int
    hidden_size: int
    intermediate_size: int
    n_layer: int
    n_head: int
    image_size: int
    patch_size: int
    eps: float
    n_merge: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]


def read_config(config: dict, config_path: Path) -> VisionProjectorInfo:
    vision = config.get("vision_config")
    if not isinstance(vision, dict) or not vision:
        raise ConversionError(
            f"{config_path} has no vision_config: this Gemma 3 checkpoint is text-only (270M and 1B have no "
            "vision tower); a projector needs Gemma 3 4B, 12B or 27B"
        )
    text = config.get("text_config") or {}
    prep_path = config_path.with_name("preprocessor_config.json")
    prep = load_json(prep_path) if prep_path.is_file() else {}
    if not isinstance(prep, dict):
        raise ConversionError(f"{prep_path} is not a JSON object")
    try:
        image_size, patch_size = int(vision.get("image_size", 896)), int(vision.get("patch_size", 14))
        tokens = int(config.get("mm_tokens_per_image", prep.get("image_seq_length", 256)))
        per_side = int(round(tokens ** 0.5))
        patches = image_size // patch_size
        if per_side * per_side != tokens or per_side == 0 or patches % per_side:
            raise ConversionError(
                f"{config_path}: mm_tokens_per_image {tokens} does not pool a {patches}x{patches} patch grid evenly"
            )
        return VisionProjectorInfo(
            n_embd_text=int(text.get("hidden_size", config.get("hidden_size"))),
            hidden_size=int(vision.get("hidden_size", 1152)),
            intermediate_size=int(vision.get("intermediate_size", 4304)),
            n_layer=int(vision.get("num_hidden_layers", 27)),
            n_head=int(vision.get("num_attention_heads", 16)),
            image_size=image_size,
            patch_size=patch_size,
            eps=float(vision.get("layer_norm_eps", 1e-6)),
            n_merge=patches // per_side,
            image_mean=tuple(float(x) for x in prep.get("image_mean", (0.5, 0.5, 0.5))),
            image_std=tuple(float(x) for x in prep.get("image_std", (0.5, 0.5, 0.5))),
        )
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"{config_path}: invalid vision or text settings ({exc})") from None


def _hf_key(hf_name: str) -> str:
    """The name gguf-py's map knows: released checkpoints say `vision_tower.vision_model.*`; transformers 5
    saves `vision_tower.*`, sometimes under `model.`."""
    name = hf_name.removeprefix("model.")
    if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
        name = "vision_tower.vision_model." + name[len("vision_tower."):]
    return name.replace("mm_input_projection_weight", "mm_input_projection.weight")


def gguf_name(hf_name: str, name_map: gguf.TensorNameMap) -> str | None:
    """The GGUF name of one HF vision tensor, None for tensors the projector does not use."""
    key = _hf_key(hf_name)
    if not key.startswith(("vision_tower.", "multi_modal_projector.")) or ".head." in key:
        return None
    return name_map.get_name(key, try_suffixes=(".weight", ".bias"))


def transform(hf_name: str, data: np.ndarray) -> np.ndarray:
    if "mm_soft_emb_norm" in hf_name:
        return data + np.float32(1.0)  # Gemma's RMSNorm computes x * (1 + w)
    return data


def _type(hf_name: str, shape: tuple[int, ...], outtype: str) -> gguf.GGMLQuantizationType:
    if ".embeddings." in hf_name:
        return gguf.GGMLQuantizationType.F32
    if "mm_input_projection" in hf_name:
        return gguf.GGMLQuantizationType.F32 if outtype == "f32" else gguf.GGMLQuantizationType.F16
    return weight_type(shape, outtype)


def plan(tensors: dict[str, TensorRef], info: VisionProjectorInfo, src: Path, outtype: str) -> list[PlannedTensor]:
    """The tensors to write, checked against config.json."""
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, info.n_layer)
    out = []
    for hf_name in sorted(tensors):
        name = gguf_name(hf_name, name_map)
        if name is None:
            continue
        ref = tensors[hf_name]
        out.append(PlannedTensor(hf_name, name, ref, ref.shape, _type(hf_name, ref.shape, outtype)))
    names = {p.name: p for p in out}
    required = ["v.patch_embd.weight", "v.position_embd.weight", "v.post_ln.weight",
                "mm.input_projection.weight", "mm.soft_emb_norm.weight"]
    required += [f"v.blk.{i}.{t}.weight" for i in range(info.n_layer) for t in ("attn_q", "ffn_up")]
    missing = [n for n in required if n not in names]
    if missing:
        raise ConversionError(f"{src}: the vision tower misses {', '.join(missing[:4])}"
                              f"{' ...' if len(missing) > 4 else ''} (config.json declares {info.n_layer} layers)")
    proj = names["mm.input_projection.weight"]
    if proj.shape != (info.hidden_size, info.n_embd_text):
        raise ConversionError(f"{src}: {proj.hf_name} has shape {list(proj.shape)}, config.json implies "
                              f"[{info.hidden_size}, {info.n_embd_text}]")
    return out


def write_metadata(writer: gguf.GGUFWriter, info: VisionProjectorInfo) -> None:
    writer.add_clip_projector_type(gguf.VisionProjectorType.GEMMA3)
    writer.add_vision_projection_dim(info.n_embd_text)
    writer.add_vision_image_size(info.image_size)
    writer.add_vision_patch_size(info.patch_size)
    writer.add_vision_embedding_length(info.hidden_size)
    writer.add_vision_feed_forward_length(info.intermediate_size)
    writer.add_vision_block_count(info.n_layer)
    writer.add_vision_head_count(info.n_head)
    writer.add_vision_attention_layernorm_eps(info.eps)
    writer.add_vision_image_mean(list(info.image_mean))
    writer.add_vision_image_std(list(info.image_std))
    writer.add_vision_use_gelu(True)
    if info.n_merge != DEFAULT_MERGE:
        writer.add_vision_projector_scale_factor(info.n_merge)
