"""Reading and validating a GGUF file's header before llama.cpp touches it.

llama.cpp reports a bad file with a log line and a NULL pointer; reading the
header ourselves lets us say precisely what is wrong (not a GGUF, truncated,
corrupt) and read the metadata cheaply (no tensor data is touched).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from edge_runtime.errors import InvalidModelError, ModelNotFoundError

GGUF_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Arrays longer than this (vocabularies, merges, scores) are summarised, not kept.
_MAX_KEPT_ARRAY = 256


@dataclass(frozen=True)
class ArraySummary:
    """A long metadata array, kept as its element type and length only."""

    element_type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_name: str
    offset: int
    n_bytes: int


@dataclass
class GGUFHeader:
    """The metadata and tensor directory of a GGUF file."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0
    kv_end: int = 0  # where the metadata ends and the tensor directory begins (bytes from the start)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """An architecture-scoped value, e.g. arch_value("context_length")."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def context_length(self) -> int | None:
        value = self.arch_value("context_length")
        return int(value) if value is not None else None

    @property
    def sliding_window(self) -> int | None:
        value = self.arch_value("attention.sliding_window")
        return int(value) if isinstance(value, (int, float)) else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @property
    def vocab_size(self) -> int | None:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, ArraySummary):
            return tokens.length
        return len(tokens) if isinstance(tokens, list) else None

    def special_tokens(self) -> dict[str, int]:
        prefix = "tokenizer.ggml."
        return {
            key[len(prefix) : -len("_token_id")]: int(value)
            for key, value in self.metadata.items()
            if key.startswith(prefix) and key.endswith("_token_id")
        }


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def damaged(self, what: str) -> InvalidModelError:
        return InvalidModelError(
            f"{self.path} is truncated or corrupt: {what} (header offset {self.pos} of {self.size} bytes). "
            "Download or convert it again."
        )

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise self.damaged(f"the header ends early, {n} more bytes needed")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def left(self) -> int:
        return self.size - self.pos

    def string(self, keep: bool = True) -> str:
        n = self.scalar("<Q")
        if n > min(self.left(), _MAX_STRING):
            raise self.damaged(f"a metadata string claims {n} bytes, more than "
                               f"{'the bytes left' if n > self.left() else 'the 16 MiB a string may hold'}")
        if not keep:  # skipped without building a Python object
            self.pos += n
            return ""
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        """One metadata value. Arrays are read flat (GGUF has no arrays of arrays), never recursively."""
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise self.damaged(f"unknown metadata value type {vtype}")
        etype, length = self.scalar("<I"), self.scalar("<Q")
        if etype == _ARRAY:
            raise self.damaged("an array of arrays (GGUF and llama.cpp allow only flat arrays)")
        if etype not in _SCALARS and etype != _STRING:
            raise self.damaged(f"an array of unknown value type {etype}")
        item_size = struct.calcsize(_SCALARS[etype]) if etype in _SCALARS else 8  # a string is at least its length
        if length * item_size > self.left():
            raise self.damaged(f"an array claims {length} items, more than the {self.left()} bytes left hold")
        keep = length <= _MAX_KEPT_ARRAY
        if etype in _SCALARS:
            data = self.take(item_size * length)
            return list(struct.unpack(f"<{length}{_SCALARS[etype][1]}", data)) if keep else ArraySummary(etype, length)
        items = [self.string(keep) for _ in range(length)]
        return items if keep else ArraySummary(etype, length)


# Bounds llama.cpp asserts on (src/llama-hparams.h); a file outside them would abort the process.
_MAX_LAYERS = 512
_MAX_EXPERTS = 1024
_MAX_STRING = 16 << 20


def check_hparams(header: "GGUFHeader") -> None:
    """Refuse hyperparameters llama.cpp would abort on (GGML_ASSERT) instead of reporting."""
    if "general.architecture" not in header.metadata or header.architecture == "clip":
        return

    def bad(key: str, value: Any, why: str) -> InvalidModelError:
        return InvalidModelError(f"{header.path} is corrupt: {header.architecture}.{key} = {value!r} ({why}). "
                                 "Download or convert it again.")

    def number(key: str) -> Any:
        value = header.arch_value(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise bad(key, value, "not an integer")
        return value

    n_layer = number("block_count")
    if n_layer is None:
        return  # a missing key is an error llama.cpp reports cleanly (and an unknown architecture has none)
    if not 1 <= n_layer <= _MAX_LAYERS:
        raise bad("block_count", n_layer, f"a model has 1 to {_MAX_LAYERS} layers")
    nextn = number("nextn_predict_layers")
    if nextn is not None and not 0 <= nextn <= n_layer:
        raise bad("nextn_predict_layers", nextn, "more than the model's layers")
    for key in ("context_length", "embedding_length"):
        value = number(key)  # a missing key is reported by llama.cpp itself
        if value is not None and not 1 <= value < 2**31:
            raise bad(key, value, "must be a positive 32-bit count")
    experts = number("expert_count") or 0
    if not 0 <= experts <= _MAX_EXPERTS:
        raise bad("expert_count", experts, f"at most {_MAX_EXPERTS}")
    for key in ("attention.head_count", "attention.head_count_kv", "feed_forward_length", "expert_used_count"):
        value = header.arch_value(key)
        if isinstance(value, ArraySummary):
            if value.length != n_layer:
                raise bad(key, value, f"a per-layer array must have {n_layer} items")
            continue
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) not in (1, n_layer):
            raise bad(key, value, f"a per-layer array must have {n_layer} items")
        if any(v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**31) for v in values):
            raise bad(key, value, "counts must be integers from 0")
    if header.arch_value("attention.head_count") == 0:
        raise bad("attention.head_count", header.arch_value("attention.head_count"), "a model needs attention heads")


def _tensor_bytes(shape: tuple[int, ...], type_id: int, path: Path, name: str) -> tuple[str, int]:
    try:
        qtype = GGMLQuantizationType(type_id)
        block, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise InvalidModelError(
            f"{path}: tensor {name!r} has tensor type {type_id}, unknown to this gguf library; "
            "the file is corrupt or newer than edge_runtime supports"
        ) from None
    n = 1
    for d in shape:
        n *= d
    if shape and shape[0] % block:
        raise InvalidModelError(f"{path} is corrupt: tensor {name!r} row of {shape[0]} is not a multiple of {block}")
    return qtype.name, n // block * type_size


_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def split_name(stem: str, index: int, count: int) -> str:
    """llama.cpp's name for shard `index` (from 1) of `count`: `NAME-00001-of-0000N.gguf`."""
    return f"{stem}-{index:05d}-of-{count:05d}.gguf"


def split_names(name: str) -> list[str]:
    """Every shard of the split model `name` belongs to, in order (`[name]` for a file that is not split)."""
    m = _SPLIT.search(name)
    if not m:
        return [name]
    count = int(m.group(2))
    return [split_name(name[: m.start()], i, count) for i in range(1, count + 1)]


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse and validate a GGUF header; raise a clear ModelError when it is unusable."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}. Check the path, or omit --model to use the default model.")
    if path.is_dir():
        raise InvalidModelError(
            f"{path} is a directory, not a GGUF file. Convert a Hugging Face checkpoint first: edge-runtime convert {path} -o model.gguf"
        )
    file_size = path.stat().st_size
    if file_size < 24:
        raise InvalidModelError(f"{path} is not a GGUF model: only {file_size} bytes")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, path)
        magic = cur.take(4)
        if magic != GGUF_MAGIC:
            raise InvalidModelError(
                f"{path} is not a GGUF model (it starts with {magic!r}, not b'GGUF'). "
                "Convert checkpoints with `edge-runtime convert`."
            )
        version = cur.scalar("<I")
        if version not in (2, 3):
            raise InvalidModelError(f"{path} has GGUF version {version}; only versions 2 and 3 are supported")
        n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
        if n_tensors > file_size or n_kv > file_size:
            raise InvalidModelError(f"{path} is corrupt: its header claims {n_tensors} tensors and {n_kv} keys")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.scalar("<I"))
        kv_end = cur.pos
        tensors = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.scalar("<I")
            if n_dims > 8:
                raise InvalidModelError(f"{path} is corrupt: tensor {name!r} has {n_dims} dimensions")
            shape = tuple(cur.scalar("<Q") for _ in range(n_dims))
            type_id, offset = cur.scalar("<I"), cur.scalar("<Q")
            type_name, n_bytes = _tensor_bytes(shape, type_id, path, name)
            tensors.append(TensorInfo(name, shape, type_name, offset, n_bytes))
        alignment = int(metadata.get("general.alignment", 32))
        data_offset = (cur.pos + alignment - 1) // alignment * alignment
    header = GGUFHeader(path, version, metadata, tensors, data_offset, file_size, kv_end)
    check_hparams(header)
    end = max((t.offset + t.n_bytes for t in tensors), default=0) + data_offset
    if end > file_size:
        missing = end - file_size
        raise InvalidModelError(
            f"{path} is truncated: its tensors need {end} bytes but the file has {file_size} "
            f"({missing} missing). The download or conversion was interrupted; fetch or convert it again."
        )
    return header
