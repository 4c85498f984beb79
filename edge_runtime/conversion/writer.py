"""Streaming, atomic GGUF writing and the sidecar manifest.

Tensors are encoded and written one at a time (large ones in row chunks),
into a temporary file in the output's folder that replaces the output only
once complete: an exception or Ctrl-C leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

import gguf

from edge_runtime.conversion.checkpoint import bf16_to_f32, f32_to_bf16, release_pages
from edge_runtime.errors import ConversionError

Q = gguf.GGMLQuantizationType
_CHUNK_ELEMENTS = 1 << 24  # rows encoded at a time: about 64 MiB of float32


@dataclass
class TensorToWrite:
    name: str
    shape: tuple[int, ...]  # numpy order
    qtype: Q
    load: Callable[[], np.ndarray]  # float32, float16, or uint16 holding bfloat16

    @property
    def nbytes(self) -> int:
        return int(np.prod(gguf.quant_shape_to_byte_shape(self.shape, self.qtype), dtype=np.int64))


def encode(data: np.ndarray, qtype: Q) -> np.ndarray:
    """Values (float32/float16/uint16-as-bf16) -> the bytes of `qtype`; bf16 passes through untouched."""
    is_bf16 = data.dtype == np.uint16
    if qtype == Q.BF16:
        return np.ascontiguousarray(data) if is_bf16 else f32_to_bf16(np.asarray(data, dtype=np.float32))
    if qtype == Q.F16 and data.dtype == np.float16:
        return np.ascontiguousarray(data)
    values = bf16_to_f32(data) if is_bf16 else np.asarray(data, dtype=np.float32)
    if qtype == Q.F32:
        return np.ascontiguousarray(values)
    if qtype == Q.F16:
        return values.astype(np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(values), qtype)


def check_free_space(directory: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise ConversionError(
            f"{directory}: not enough disk space for {what}: need about {needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free"
        )


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path next to `path`; renamed onto `path` on success, removed on any failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def scratch_path(near: Path, suffix: str) -> Iterator[Path]:
    """A temporary file path next to `near`, always removed afterwards."""
    tmp = Path(near).with_name(f".{Path(near).name}.{os.getpid()}{suffix}")
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    try:
        from tqdm import tqdm
    except ImportError:
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False)


def write_gguf(
    path: Path,
    arch: str,
    kv: Callable[[gguf.GGUFWriter], None],
    tensors: Sequence[TensorToWrite],
    *,
    progress: bool = True,
    desc: str = "writing",
) -> None:
    """Write a GGUF file at `path` (directly, not atomically; wrap in `atomic_path`)."""
    writer = gguf.GGUFWriter(path, arch)
    try:
        kv(writer)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        fout = writer.fout[0]
        total = sum(t.nbytes for t in tensors)
        with _progress(total, desc, progress) as bar:
            for t in tensors:
                writer.write_padding(fout, fout.tell())
                written = _write_tensor(fout, t)
                if written != t.nbytes:
                    raise ConversionError(f"{path}: tensor {t.name} encoded to {written} bytes, expected {t.nbytes}")
                writer.write_padding(fout, written)
                if bar is not None:
                    bar.update(written)
        fout.flush()
    finally:
        writer.close()


def _write_tensor(fout, t: TensorToWrite) -> int:
    data = t.load()
    if tuple(data.shape) != tuple(t.shape):
        raise ConversionError(f"tensor {t.name}: got shape {list(data.shape)}, planned {list(t.shape)}")
    if data.ndim < 2 or data.size <= _CHUNK_ELEMENTS:
        buf = encode(data, t.qtype)
        fout.write(np.ascontiguousarray(buf).data)
        release_pages(data)
        return buf.nbytes
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // int(np.prod(data.shape[1:])))
    written = 0
    for start in range(0, data.shape[0], rows_per_chunk):
        chunk = data[start : start + rows_per_chunk]
        buf = encode(chunk, t.qtype)
        fout.write(np.ascontiguousarray(buf).data)
        release_pages(chunk)
        written += buf.nbytes
    return written


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(path: Path, manifest: dict) -> Path:
    """Atomically write `manifest` as JSON at `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path
