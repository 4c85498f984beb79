"""A GGUF split into shards no larger than a store's limit, as llama.cpp's gguf-split lays them out.

`NAME-00001-of-0000N.gguf`: the first shard holds all metadata, every shard `split.no`, `split.count` and
`split.tensors.count`, so llama.cpp loads the model from the first shard. Nothing is decoded: the metadata
bytes are copied as they are (a 262k-token vocabulary never becomes Python objects), tensor data is copied
file to file by the kernel (`copy_file_range`) and stays 32-byte aligned, so memory stays flat whatever
the model's size. A tensor larger than the limit gets a shard of its own.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from gguf import GGMLQuantizationType

from edge_runtime.conversion.writer import progress_bar
from edge_runtime.errors import InvalidArgumentError
from edge_runtime.gguf_file import GGUFHeader, TensorInfo, read_header, split_name

_COPY_CHUNK = 64 << 20
_U16, _I32 = 2, 5  # GGUF value types of split.no / split.count (u16) and split.tensors.count (i32)


@dataclass(frozen=True)
class Shard:
    path: Path
    size: int
    n_tensors: int


def _pad(n: int, alignment: int) -> int:
    return (alignment - n % alignment) % alignment


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _tensor_info(t: TensorInfo, offset: int) -> bytes:
    out = _string(t.name) + struct.pack("<I", len(t.shape))
    out += b"".join(struct.pack("<Q", d) for d in t.shape)
    return out + struct.pack("<IQ", GGMLQuantizationType[t.type_name].value, offset)


def plan_shards(header: GGUFHeader, max_bytes: int) -> list[list[TensorInfo]]:
    """Tensors per shard, in file order; each shard's file (metadata included) under `max_bytes` unless one
    tensor alone is larger."""
    align = int(header.metadata.get("general.alignment", 32))
    first_meta = header.data_offset + 256  # the source's metadata and directory, plus the split keys
    groups: list[list[TensorInfo]] = [[]]
    used = first_meta
    for t in header.tensors:
        cost = t.n_bytes + _pad(t.n_bytes, align) + len(_tensor_info(t, 0))
        if groups[-1] and used + cost > max_bytes:
            groups.append([])
            used = 512  # a later shard's header: the split keys and its directory
        groups[-1].append(t)
        used += cost
    return groups


def _copy_bytes(src_fd: int, dst_fd: int, offset: int, n: int, bar) -> None:
    done = 0
    while done < n:
        step = min(_COPY_CHUNK, n - done)
        try:
            copied = os.copy_file_range(src_fd, dst_fd, step, offset + done)
        except OSError:  # another file system: plain reads, chunk by chunk
            copied = os.write(dst_fd, os.pread(src_fd, step, offset + done))
        if copied <= 0:
            raise OSError(f"copy stopped at {done} of {n} bytes")
        done += copied
        if bar is not None:
            bar.update(copied)


def split_gguf(src: Path, out_dir: Path, stem: str, max_bytes: int, *, progress: bool = False) -> list[Shard]:
    """Write `src` into `out_dir` as shards of at most `max_bytes` (one file named `stem.gguf` if it fits)."""
    header = read_header(src)
    if "split.count" in header.metadata:
        raise InvalidArgumentError(f"{src} is already a shard of a split model: give its first shard merged back "
                                   "(llama-gguf-split --merge) or the original file")
    if header.data_offset + 4096 > max_bytes:
        raise InvalidArgumentError(f"a shard limit of {max_bytes} bytes cannot hold the model's metadata "
                                   f"({header.data_offset} bytes)")
    align = int(header.metadata.get("general.alignment", 32))
    groups = [header.tensors] if header.file_size <= max_bytes else plan_shards(header, max_bytes)
    count = len(groups)
    shards = []
    with open(src, "rb") as fsrc, progress_bar(sum(t.n_bytes for t in header.tensors), "packaging", progress) as bar:
        src_kv = os.pread(fsrc.fileno(), header.kv_end - 24, 24)  # the metadata, byte for byte
        n_src_kv = len(header.metadata)
        for i, tensors in enumerate(groups):
            path = out_dir / (f"{stem}.gguf" if count == 1 else split_name(stem, i + 1, count))
            kv = src_kv if i == 0 else b""
            n_kv = n_src_kv if i == 0 else 0
            if count > 1:
                kv += _string("split.no") + struct.pack("<IH", _U16, i)
                kv += _string("split.count") + struct.pack("<IH", _U16, count)
                kv += _string("split.tensors.count") + struct.pack("<Ii", _I32, len(header.tensors))
                n_kv += 3
            directory, offset = b"", 0
            for t in tensors:
                directory += _tensor_info(t, offset)
                offset += t.n_bytes + _pad(t.n_bytes, align)
            head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), n_kv) + kv + directory
            head += bytes(_pad(len(head), align))
            with open(path, "wb") as out:
                out.write(head)
                out.flush()
                fd = out.fileno()
                for t in tensors:
                    _copy_bytes(fsrc.fileno(), fd, header.data_offset + t.offset, t.n_bytes, bar)
                    os.write(fd, bytes(_pad(t.n_bytes, align)))
                size = os.lseek(fd, 0, os.SEEK_CUR)
            shards.append(Shard(path, size, len(tensors)))
    for s in shards:
        if s.size > max_bytes and s.n_tensors > 1:
            raise InvalidArgumentError(f"{s.path.name} came out at {s.size} bytes, over the {max_bytes} limit")
    return shards
