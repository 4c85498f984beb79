"""Hugging Face checkpoints: config and lazy, memory-mapped tensor access over safetensors shards.

The safetensors header is parsed here and each tensor is a view into an
`np.memmap` of its shard, so nothing is read until a tensor is used and
only one tensor at a time needs to be in memory. BF16 has no numpy dtype:
it is exposed as a uint16 view (`bf16_to_f32` widens it).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.errors import ConversionError

# safetensors dtype -> (numpy dtype of the raw view, bytes per element)
_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("u1"),
}

_MAX_HEADER = 100 * 1024 * 1024


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """Widen a uint16 view of bfloat16 values to float32 (exact)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (round to nearest even, as ggml does), as uint16."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(nan, ((bits >> 16) | 64).astype(np.uint16), rounded)


def release_pages(view: np.ndarray) -> None:
    """Drop the pages of a memory-mapped view from this process (they stay in the page cache).

    Without this, every page read while converting counts in the resident set, so
    peak RSS would grow to the size of the checkpoint.
    """
    base = view
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is None or not hasattr(mmap, "MADV_DONTNEED") or view.nbytes == 0:
        return
    start = view.ctypes.data - np.frombuffer(base, dtype=np.uint8).ctypes.data
    page = mmap.PAGESIZE
    aligned = start - start % page
    try:
        base.madvise(mmap.MADV_DONTNEED, aligned, min(view.nbytes + start - aligned, len(base) - aligned))
    except (OSError, ValueError):
        pass  # only an optimisation


@dataclass
class TensorRef:
    """One tensor of a shard, not yet read."""

    name: str
    dtype: str  # safetensors dtype name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    shard: "Shard"
    begin: int  # absolute byte offsets in the shard file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    def raw(self) -> np.ndarray:
        """A read-only memory-mapped view (uint16 for BF16)."""
        np_dtype = _DTYPES[self.dtype]
        count = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        view = self.shard.memmap()[self.begin : self.end].view(np_dtype)
        if view.size != count:
            raise ConversionError(
                f"{self.shard.path}: tensor {self.name} holds {view.size} values, its shape {list(self.shape)} needs {count}"
            )
        return view.reshape(self.shape)

    def to_f32(self) -> np.ndarray:
        data = self.raw()
        if self.dtype == "BF16":
            return bf16_to_f32(data)
        return data.astype(np.float32)


@dataclass
class Shard:
    """One .safetensors file: its header, parsed; its data mapped on first use."""

    path: Path
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    _map: np.memmap | None = None

    @classmethod
    def open(cls, path: Path) -> "Shard":
        shard = cls(path)
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ConversionError(f"{path}: truncated safetensors file ({size} bytes, no header)")
                (header_len,) = struct.unpack("<Q", head)
                if header_len > _MAX_HEADER or 8 + header_len > size:
                    raise ConversionError(f"{path}: truncated or not a safetensors file (header of {header_len} bytes, file of {size})")
                header = json.loads(f.read(header_len))
        except FileNotFoundError:
            raise ConversionError(f"{path}: shard file is missing") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ConversionError(f"{path}: not a safetensors file (unreadable header)") from None
        base = 8 + header_len
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = info.get("dtype")
            if dtype not in _DTYPES:
                raise ConversionError(f"{path}: tensor {name} has unsupported dtype {dtype}")
            begin, end = info["data_offsets"]
            shape = tuple(int(d) for d in info["shape"])
            if base + end > size:
                raise ConversionError(
                    f"{path}: truncated shard: tensor {name} ends at byte {base + end}, the file has {size} bytes"
                )
            expected = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
            if end - begin != expected:
                raise ConversionError(f"{path}: tensor {name} has {end - begin} bytes, its shape {list(shape)} needs {expected}")
            shard.tensors[name] = TensorRef(name, dtype, shape, shard, base + begin, base + end)
        return shard

    def memmap(self) -> np.memmap:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._map

    def close(self) -> None:
        if self._map is not None:
            mm = getattr(self._map, "_mmap", None)
            self._map = None
            if mm is not None:
                try:
                    mm.close()
                except BufferError:  # a view is still alive; the GC will unmap it
                    pass


def load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConversionError(f"{path}: file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path}: invalid JSON ({exc})") from None


class Checkpoint:
    """A local Hugging Face checkpoint folder: config.json, tokenizer files, safetensors shards.

    Use as a context manager; `tensors` maps checkpoint tensor names to `TensorRef`s.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise ConversionError(f"{self.dir}: not a checkpoint folder")
        self.config = load_json(self.dir / "config.json")
        self.shards: list[Shard] = []
        self.tensors: dict[str, TensorRef] = {}
        try:
            self._open_shards()
        except BaseException:
            self.close()
            raise

    def _open_shards(self) -> None:
        index_path = self.dir / "model.safetensors.index.json"
        if index_path.is_file():
            weight_map: dict[str, str] = load_json(index_path).get("weight_map", {})
            files = sorted(set(weight_map.values()))
            for fname in files:
                if not (self.dir / fname).is_file():
                    raise ConversionError(f"{self.dir / fname}: shard listed in {index_path.name} is missing")
        else:
            weight_map = {}
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
            if not files:
                raise ConversionError(f"{self.dir}: no *.safetensors files (only safetensors checkpoints are supported)")
        for fname in files:
            shard = Shard.open(self.dir / fname)
            self.shards.append(shard)
            for name, ref in shard.tensors.items():
                if name in self.tensors:
                    raise ConversionError(f"{shard.path}: tensor {name} also appears in {self.tensors[name].shard.path.name}")
                self.tensors[name] = ref
        for name, fname in weight_map.items():
            if name not in self.tensors:
                raise ConversionError(f"{self.dir / fname}: tensor {name} listed in {index_path.name} is not in the shard")

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else str(self.config.get("model_type", "unknown"))

    @property
    def text_config(self) -> dict:
        """The language model's config (nested `text_config` of multimodal checkpoints)."""
        text = self.config.get("text_config")
        return text if isinstance(text, dict) else self.config

    def source_bytes(self) -> int:
        return sum(s.path.stat().st_size for s in self.shards)

    def close(self) -> None:
        for shard in self.shards:
            shard.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_source(src: str | os.PathLike[str]) -> Path:
    """A local folder as is; otherwise a Hugging Face repo id, downloaded with huggingface_hub."""
    path = Path(src)
    if path.exists():
        if not path.is_dir():
            raise ConversionError(f"{path}: expected a checkpoint folder (with config.json and *.safetensors)")
        return path
    text = str(src)
    if text.count("/") != 1 or text.startswith((".", "/")):
        raise ConversionError(f"{text}: no such folder, and not a Hugging Face repo id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConversionError("downloading from the Hugging Face hub needs huggingface-hub: pip install 'edge-runtime[convert]'") from None
    try:
        local = snapshot_download(
            repo_id=text,
            allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.jinja"],
        )
    except Exception as exc:  # hub errors are many and unrelated; report them as one
        raise ConversionError(f"{text}: could not download from the Hugging Face hub: {exc}") from None
    return Path(local)
