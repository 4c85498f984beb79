"""Gemma 4 audio projector: the tensor and metadata mapping (written by `conversion.mmproj`).

The audio half of llama.cpp's multimodal projector for Gemma 4 E2B/E4B
(`clip.audio.projector_type = gemma4a`): the conformer audio tower plus the
`embed_audio` projection into the text model's embedding space. The vision
tower is not written (the runtime only uses audio from the projector).

Contract (llama.cpp `conversion/gemma.py` Gemma4VisionAudioModel and
`tools/mtmd/clip.cpp` PROJECTOR_TYPE_GEMMA4A):
- `model.audio_tower.*` -> `a.*`, `model.embed_audio.embedding_projection` -> `mm.a.input_projection`;
- `per_dim_scale` is stored after softplus, depthwise conv `[C, 1, K]` as `[C, K]`;
- ClippableLinear clamp scalars (`input_min` ...) as 1-D tensors of one F32 value;
- subsampling convolutions and the depthwise conv stay F32.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

import gguf

from edge_runtime.conversion.checkpoint import Checkpoint, TensorRef
from edge_runtime.conversion.mmproj import PlannedTensor, weight_type
from edge_runtime.errors import ConversionError

KIND = "audio"

_CLAMP_SUFFIXES = ("input_min", "input_max", "output_min", "output_max")

# Per-layer names of the conformer block: HF (after dropping ".linear") -> GGUF.
# Note the crossed names: HF `lconv1d.pre_layer_norm` is GGUF `conv_norm` and
# `lconv1d.conv_norm` is `norm_conv` (clip.cpp loads them the other way round on purpose).
_LAYER_NAMES = {
    "feed_forward1.ffw_layer_1": "ffn_up",
    "feed_forward1.ffw_layer_2": "ffn_down",
    "feed_forward1.pre_layer_norm": "ffn_norm",
    "feed_forward1.post_layer_norm": "ffn_post_norm",
    "feed_forward2.ffw_layer_1": "ffn_up_1",
    "feed_forward2.ffw_layer_2": "ffn_down_1",
    "feed_forward2.pre_layer_norm": "ffn_norm_1",
    "feed_forward2.post_layer_norm": "ffn_post_norm_1",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.post": "attn_out",
    "self_attn.relative_k_proj": "attn_k_rel",
    "self_attn.per_dim_scale": "per_dim_scale",
    "self_attn.per_dim_key_scale": "per_dim_k_scale",
    "lconv1d.linear_start": "conv_pw1",
    "lconv1d.linear_end": "conv_pw2",
    "lconv1d.depthwise_conv1d": "conv_dw",
    "lconv1d.pre_layer_norm": "conv_norm",
    "lconv1d.conv_norm": "norm_conv",
    "norm_pre_attn": "attn_pre_norm",
    "norm_post_attn": "attn_post_norm",
    "norm_out": "ln2",
}
_GLOBAL_NAMES = {
    "subsample_conv_projection.layer0.conv": "a.conv1d.0",
    "subsample_conv_projection.layer0.norm": "a.conv1d.0.norm",
    "subsample_conv_projection.layer1.conv": "a.conv1d.1",
    "subsample_conv_projection.layer1.norm": "a.conv1d.1.norm",
    "subsample_conv_projection.input_proj_linear": "a.input_projection",
    "output_proj": "a.pre_encode.out",
}
_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class AudioProjectorInfo:
    """What the converter reads from config.json."""

    model_type: str
    n_embd_text: int
    hidden_size: int
    n_layer: int
    n_head: int
    n_mel_bins: int
    eps: float


# --------------------------------------------------------------------------- config


def read_config(config: dict, config_path: Path) -> AudioProjectorInfo:
    """The audio tower's settings from config.json, or a ConversionError naming it."""
    model_type = str(config.get("model_type", ""))
    if model_type.startswith("gemma3n"):
        raise ConversionError(
            f"{config_path}: Gemma 3n's audio encoder does not run in llama.cpp's mtmd; write it as ONNX for "
            "the runtime instead: edge-runtime convert-mmproj CKPT -o audio.onnx"
        )
    audio = config.get("audio_config")
    if not isinstance(audio, dict) or not audio:
        raise ConversionError(
            f"{config_path} has no audio_config: this checkpoint ({model_type or 'unknown model type'}) "
            "has no audio tower; audio needs Gemma 4 E2B or E4B"
        )
    if not model_type.startswith("gemma4"):
        raise ConversionError(f"{config_path}: model_type {model_type!r} is not Gemma 4; only Gemma 4 audio is supported")
    text = config.get("text_config") or {}
    n_embd_text = text.get("hidden_size", config.get("hidden_size"))
    try:
        return AudioProjectorInfo(
            model_type=model_type,
            n_embd_text=int(n_embd_text),
            hidden_size=int(audio.get("hidden_size", 1024)),
            n_layer=int(audio.get("num_hidden_layers", 12)),
            n_head=int(audio.get("num_attention_heads", 8)),
            n_mel_bins=int(audio.get("input_feat_size", 128)),
            eps=float(audio.get("rms_norm_eps", 1e-6)),
        )
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"{config_path}: invalid audio or text settings ({exc})") from None


# --------------------------------------------------------------------------- tensor plan


def gguf_name(hf_name: str) -> str | None:
    """The GGUF name of one HF audio tensor, None for tensors the projector does not use."""
    if hf_name == "model.embed_audio.embedding_projection.weight":
        return "mm.a.input_projection.weight"
    if not hf_name.startswith("model.audio_tower."):
        return None
    name = hf_name[len("model.audio_tower.") :].replace(".linear.", ".")
    base, _, suffix = name.rpartition(".")
    if suffix in ("per_dim_scale", "per_dim_key_scale"):  # bare parameters: stored as "<name>.weight"
        base, suffix = name, "weight"
    if suffix not in ("weight", "bias") + _CLAMP_SUFFIXES:
        return None
    match = _LAYER_RE.match(base)
    if match:
        mapped = _LAYER_NAMES.get(match.group(2))
        return f"a.blk.{match.group(1)}.{mapped}.{suffix}" if mapped else None
    mapped = _GLOBAL_NAMES.get(base)
    return f"{mapped}.{suffix}" if mapped else None


def transform(hf_name: str, data: np.ndarray) -> np.ndarray:
    if data.ndim == 0:  # clamp scalars: clip.cpp reads them as 1-D F32 tensors
        data = data.reshape(1)
    if hf_name.endswith("per_dim_scale") or hf_name.endswith("per_dim_key_scale"):
        data = np.logaddexp(0.0, data).astype(np.float32)  # softplus, numerically stable
    if "lconv1d.depthwise_conv1d" in hf_name and hf_name.endswith(".weight"):
        if data.ndim != 3 or data.shape[1] != 1:
            raise ConversionError(f"{hf_name}: expected a depthwise conv weight [C, 1, K], got {list(data.shape)}")
        data = data.reshape(data.shape[0], data.shape[2])
    return data


def plan(tensors: dict[str, TensorRef], info: AudioProjectorInfo, src: Path, outtype: str) -> list[PlannedTensor]:
    """The tensors to write, checked against config.json."""
    out = []
    for hf_name in sorted(tensors):
        name = gguf_name(hf_name)
        if name is None:
            continue
        ref = tensors[hf_name]
        shape = ref.shape or (1,)
        if "lconv1d.depthwise_conv1d" in hf_name and len(shape) == 3:
            shape = (shape[0], shape[2])
        # The subsampling convolutions, their projection and the depthwise conv stay F32 (as llama.cpp writes them).
        keep_f32 = "subsample_conv_projection" in hf_name or "depthwise_conv1d" in hf_name
        out.append(PlannedTensor(hf_name, name, ref, shape, weight_type(shape, "f32" if keep_f32 else outtype)))
    if not any(p.hf_name.startswith("model.audio_tower.") for p in out):
        raise ConversionError(f"{src}: config.json declares an audio tower but no model.audio_tower.* tensors were found")
    if "model.embed_audio.embedding_projection.weight" not in tensors:
        raise ConversionError(f"{src}: missing tensor(s) model.embed_audio.embedding_projection.weight")
    names = {p.name for p in out}
    for i in range(info.n_layer):
        if f"a.blk.{i}.attn_q.weight" not in names:
            raise ConversionError(f"{src}: audio layer {i} of {info.n_layer} (config.json) has no tensors")
    return out


def write_metadata(writer: gguf.GGUFWriter, info: AudioProjectorInfo) -> None:
    writer.add_string("clip.audio.projector_type", "gemma4a")
    writer.add_uint32("clip.audio.projection_dim", info.n_embd_text)
    writer.add_uint32("clip.audio.embedding_length", info.hidden_size)
    writer.add_uint32("clip.audio.feed_forward_length", info.hidden_size * 4)
    writer.add_uint32("clip.audio.block_count", info.n_layer)
    writer.add_uint32("clip.audio.attention.head_count", info.n_head)
    writer.add_float32("clip.audio.attention.layer_norm_epsilon", info.eps)
    writer.add_uint32("clip.audio.num_mel_bins", info.n_mel_bins)


def iter_audio_tensor_names(src: str | os.PathLike[str]) -> Iterator[tuple[str, str]]:
    """(HF name, GGUF name) pairs the converter would write (for inspection and tests)."""
    with Checkpoint(Path(src)) as ckpt:
        names = sorted(ckpt.tensors)
    for hf_name in names:
        name = gguf_name(hf_name)
        if name is not None:
            yield hf_name, name
