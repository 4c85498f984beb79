"""The conversion pipeline: checkpoint -> GGUF (f32/f16/bf16/q8_0 directly, other types through llama.cpp)."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import gguf

from edge_runtime.conversion.checkpoint import Checkpoint, resolve_source
from edge_runtime.conversion.gemma import ModelPlan, gguf_arch, plan_model
from edge_runtime.conversion.quantize import resolve_outtype, tensor_type
from edge_runtime.conversion.tokenizer import Vocab, load_vocab, write_vocab_fields
from edge_runtime.conversion.writer import (
    TensorToWrite, atomic_path, check_free_space, check_writable, scratch_path, sha256_file, write_gguf, write_manifest,
)
from edge_runtime.errors import ConversionError

Q = gguf.GGMLQuantizationType
MANIFEST_FORMAT = "edge-runtime.gguf-manifest/1"


@dataclass(frozen=True)
class PlanSummary:
    """Sizes of the model about to be written (for expected file sizes)."""

    n_params: int
    n_embd_params: int  # the token embedding's weights
    embd_width: int

    @classmethod
    def of(cls, tensors: Sequence[TensorToWrite]) -> "PlanSummary":
        total = sum(int(math.prod(t.shape)) for t in tensors)
        embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
        return cls(total, int(math.prod(embd.shape)) if embd else 0, int(embd.shape[-1]) if embd else 256)


@dataclass
class ConversionResult:
    path: Path
    manifest: dict
    verification: dict | None = None
    manifest_path: Path | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def _metadata_writer(plan: ModelPlan, vocab: Vocab, ftype: int, name: str):
    def kv(writer: gguf.GGUFWriter) -> None:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        for method, _key, value in plan.metadata:
            if method == "add_rope_scaling_type":
                value = gguf.RopeScalingType.LINEAR
            getattr(writer, method)(value)
        writer.add_file_type(ftype)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_vocab_fields(writer, vocab)

    return kv


def _vocab_bytes(vocab: Vocab) -> int:
    return sum(len(t.encode("utf-8")) + 16 for t in vocab.tokens) + sum(len(m) + 8 for m in vocab.merges)


def convert_checkpoint(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    outtype: str | None = "f16",
    *,
    preset: str | None = None,
    imatrix: str | os.PathLike[str] | None = None,
    verify: bool = False,
    progress: bool = True,
    n_threads: int = 2,
    on_plan: Callable[[PlanSummary], None] | None = None,
    lora: Sequence[tuple[str | os.PathLike[str], float]] = (),
) -> ConversionResult:
    """Convert a Hugging Face Gemma checkpoint (folder or repo id) to a GGUF file at `out`.

    Writes `out` atomically and a manifest at `out + ".json"`. Raises ConversionError
    (or InvalidArgumentError for bad settings) naming the file and the problem.
    `on_plan` is called with the model's sizes once they are known, before any writing.
    `lora`: PEFT adapter folders (with a scale each) merged into the weights before writing.
    """
    started = time.monotonic()
    ot = resolve_outtype(outtype, preset)
    out = Path(out)
    if not out.parent.is_dir():
        raise ConversionError(f"{out.parent}: output folder does not exist")
    check_writable(out.parent)
    if imatrix is not None and not ot.via_llama:
        raise ConversionError(f"--imatrix only applies to llama.cpp quantization types, not {ot.name}")
    imatrix_data = None
    if imatrix is not None:
        from edge_runtime.backend.quantize import load_imatrix

        imatrix_data = load_imatrix(imatrix)
    src_dir = resolve_source(src)
    with Checkpoint(src_dir) as ckpt, contextlib.ExitStack() as adapters:
        arch = gguf_arch(ckpt)
        n_vocab_cfg = ckpt.text_config.get("vocab_size")
        if n_vocab_cfg is None:
            raise ConversionError(f"{ckpt.dir / 'config.json'}: missing 'vocab_size'")
        vocab = load_vocab(ckpt.dir, int(n_vocab_cfg), arch=arch)
        plan = plan_model(ckpt, len(vocab))
        if lora:
            from edge_runtime.lora.merge import merge_into_plan

            merge_into_plan(plan, lora, adapters)
        if ot.via_llama:
            all_bf16 = all(ckpt.tensors[s].dtype == "BF16" for p in plan.tensors for s in p.sources)
            base = Q.BF16 if all_bf16 else Q.F16
            base_ftype = int(gguf.LlamaFileType.MOSTLY_BF16 if all_bf16 else gguf.LlamaFileType.MOSTLY_F16)
        else:
            base, base_ftype = ot.direct, ot.ftype
        tensors = [TensorToWrite(p.name, p.shape, tensor_type(base, p.shape, p.keep_f32), p.load) for p in plan.tensors]
        if on_plan is not None:
            on_plan(PlanSummary.of(tensors))
        data_bytes = sum(t.nbytes for t in tensors) + _vocab_bytes(vocab) + (1 << 20)
        check_free_space(out.parent, data_bytes * (2 if ot.via_llama else 1), f"{out.name}")
        kv = _metadata_writer(plan, vocab, base_ftype, ckpt.config.get("_name_or_path") or src_dir.name)
        with atomic_path(out) as tmp:
            if ot.via_llama:
                from edge_runtime.backend.quantize import quantize_model

                with scratch_path(out, f".{base.name.lower()}.tmp") as tmp16:
                    write_gguf(tmp16, arch, kv, tensors, progress=progress, desc=f"{out.name} ({base.name})")
                    quantize_model(tmp16, tmp, ot.ftype, n_threads=n_threads, imatrix=imatrix_data)
            else:
                write_gguf(tmp, arch, kv, tensors, progress=progress, desc=out.name)
        manifest = {
            "format": MANIFEST_FORMAT,
            "file": out.name,
            "sha256": sha256_file(out),
            "size_bytes": out.stat().st_size,
            "quantization": ot.name,
            "file_type": ot.ftype,
            "architecture": arch,
            "hf_architecture": plan.hf_arch,
            "lora_merged": [{"adapter": str(Path(d).resolve()), "scale": float(sc)} for d, sc in lora],
            "source": {
                "checkpoint": str(src),
                "path": str(src_dir),
                "shards": [{"file": s.path.name, "size_bytes": s.path.stat().st_size} for s in ckpt.shards],
                "tensors": len(ckpt.tensors),
            },
            "tensors": len(tensors),
            "imatrix": str(imatrix) if imatrix is not None else None,
            "tokenizer": {
                "source": vocab.source.name,
                "model": vocab.model,
                "n_tokens": len(vocab),
                "n_merges": len(vocab.merges),
                "special_ids": vocab.special_ids,
                "chat_template": vocab.chat_template is not None,
                "checks": {"unique_tokens": True, "matches_embedding_rows": True},
            },
        }
    verification = None
    if verify:
        from edge_runtime.conversion.verify import verify_gguf

        verification = verify_gguf(out, src_dir, n_threads=n_threads).to_dict()
        manifest["verification"] = verification
        tok = verification.get("tokenizer")
        manifest["tokenizer"]["checks"]["agrees_with_hf"] = None if tok is None else tok["ok"]
    manifest_path = write_manifest(out.with_name(out.name + ".json"), manifest)
    return ConversionResult(out, manifest, verification, manifest_path, time.monotonic() - started)
