"""Multimodal projector (mmproj) GGUF files from a Hugging Face checkpoint folder.

llama.cpp's mtmd loads a model's encoders from a separate "clip" GGUF. Written
here, each mapped in its own module:
- Gemma 4 audio (`mmproj_audio.py`, projector `gemma4a`) and vision (`mmproj_gemma4_vision.py`,
  projector `gemma4v`), in one file as llama.cpp's converter writes them;
- Gemma 3 vision, SigLIP (`mmproj_vision.py`, projector `gemma3`);
- Gemma 3n vision, MobileNetV5 (`mmproj_gemma3n_vision.py`, projector `gemma3nv`).
Gemma 3n's audio encoder does not run in mtmd: `gemma3n_audio.py` writes it as ONNX.

Torch-free: tensors come one at a time from memory-mapped safetensors shards
(`conversion.checkpoint.Checkpoint`, which also reads bf16), are converted and
written straight to the file, which appears atomically (temporary file, then
os.replace) after a free-space check.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import gguf

from edge_runtime.conversion.checkpoint import Checkpoint, TensorRef, load_json
from edge_runtime.conversion.writer import atomic_path, check_free_space
from edge_runtime.errors import ConversionError

log = logging.getLogger("edge_runtime.conversion.mmproj")

OUTTYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}
_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}


@dataclass(frozen=True)
class PlannedTensor:
    hf_name: str
    name: str
    ref: TensorRef
    shape: tuple[int, ...]  # after the transform, numpy order
    qtype: gguf.GGMLQuantizationType


def weight_type(shape: tuple[int, ...], outtype: str) -> gguf.GGMLQuantizationType:
    """Vectors stay F32; matrices follow the output type (F16 where Q8_0 blocks do not fit a row)."""
    if len(shape) <= 1:
        return gguf.GGMLQuantizationType.F32
    qtype = OUTTYPES[outtype]
    if qtype == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % 32 != 0:
        return gguf.GGMLQuantizationType.F16
    return qtype


def _encode(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(data.astype(np.float16))
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)


def _nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * type_size


def _read_config(src: Path) -> tuple[dict, Path]:
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{src} has no config.json: not a Hugging Face checkpoint folder")
    config = load_json(config_path)
    if not isinstance(config, dict):
        raise ConversionError(f"{config_path} is not a JSON object")
    return config, config_path


def convert_mmproj(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    outtype: str = "f16",
    *,
    progress: bool = True,
) -> Path:
    """Write the projector GGUF of checkpoint folder `src` to `out`: Gemma 4 audio or Gemma 3 vision.

    outtype: f32, f16 (default), bf16 or q8_0 for the 2-D weights; norms,
    scalars, convolutions and embeddings stay F32. Returns the output path.
    """
    from edge_runtime.conversion import mmproj_audio, mmproj_gemma3n_vision, mmproj_gemma4_vision, mmproj_vision

    src = Path(src)
    out = Path(out)
    if outtype not in OUTTYPES:
        raise ConversionError(f"unknown outtype {outtype!r}; use one of {', '.join(OUTTYPES)}")
    if not src.is_dir():
        raise ConversionError(f"checkpoint folder {src} does not exist")
    config, config_path = _read_config(src)
    model_type = str(config.get("model_type", ""))
    if model_type.startswith("gemma3") and not model_type.startswith("gemma3n"):
        parts = [(mmproj_vision, mmproj_vision.read_config(config, config_path))]
    elif model_type.startswith("gemma4"):  # audio and vision in one file, as llama.cpp writes them
        parts = []
        if config.get("audio_config"):
            parts.append((mmproj_audio, mmproj_audio.read_config(config, config_path)))
        vision = mmproj_gemma4_vision.read_config(config, config_path)
        if vision is not None:
            parts.append((mmproj_gemma4_vision, vision))
        if not parts:
            raise ConversionError(f"{config_path}: this Gemma 4 checkpoint has neither an audio nor a vision tower")
    elif model_type.startswith("gemma3n"):  # the vision tower (mtmd); the audio tower goes to ONNX
        vision = mmproj_gemma3n_vision.read_config(config, config_path)
        if vision is None:
            raise ConversionError(f"{config_path}: this Gemma 3n checkpoint has no vision tower; its audio encoder "
                                  "is written as ONNX: edge-runtime convert-mmproj CKPT -o audio.onnx")
        parts = [(mmproj_gemma3n_vision, vision)]
    else:  # the rest are refused there with the reason
        parts = [(mmproj_audio, mmproj_audio.read_config(config, config_path))]
    with Checkpoint(src) as ckpt:
        plan: list[PlannedTensor] = []
        transforms: dict[str, Callable[[str, np.ndarray], np.ndarray]] = {}
        for kind, info in parts:
            for p in kind.plan(ckpt.tensors, info, src, outtype):
                plan.append(p)
                transforms[p.hf_name] = kind.transform
        kinds = [kind.KIND for kind, _ in parts]

        def metadata(writer: gguf.GGUFWriter) -> None:
            writer.add_type(gguf.GGUFType.MMPROJ)
            writer.add_name(f"{src.name} {' and '.join(kinds)} projector")
            writer.add_file_type(_FILE_TYPES[outtype])
            writer.add_bool("clip.has_vision_encoder", "vision" in kinds)
            writer.add_bool("clip.has_audio_encoder", "audio" in kinds)
            for kind, info in parts:
                kind.write_metadata(writer, info)

        return _write(out, plan, metadata, lambda name, data: transforms[name](name, data), progress,
                      f"the {' and '.join(kinds)} projector {out.name}")


def _write(out: Path, plan: list[PlannedTensor], metadata: Callable[[gguf.GGUFWriter], None],
           transform: Callable[[str, np.ndarray], np.ndarray], progress: bool, what: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(out.parent, sum(_nbytes(p.shape, p.qtype) for p in plan) + (1 << 20), what)
    try:
        with atomic_path(out) as tmp:
            writer = gguf.GGUFWriter(tmp, "clip")
            try:
                metadata(writer)
                for p in plan:
                    writer.add_tensor_info(p.name, p.shape, np.dtype(np.float32), _nbytes(p.shape, p.qtype), raw_dtype=p.qtype)
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
                for i, p in enumerate(plan, 1):
                    encoded = _encode(transform(p.hf_name, p.ref.to_f32()), p.qtype)
                    if encoded.nbytes != _nbytes(p.shape, p.qtype):
                        raise ConversionError(f"internal error: {p.name} encoded to {encoded.nbytes} bytes")
                    writer.write_tensor_data(encoded)
                    if progress:
                        print(f"\r[{i}/{len(plan)}] {p.name:<40} {p.qtype.name}", end="", file=sys.stderr, flush=True)
                if progress:
                    print(file=sys.stderr)
            finally:
                writer.close()
    except OSError as exc:
        raise ConversionError(f"cannot write {out}: {exc}") from None
    log.info("wrote %s (%d tensors)", out, len(plan))
    return out
