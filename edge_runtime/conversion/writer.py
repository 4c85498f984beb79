"""Streaming, atomic GGUF writing and the sidecar manifest.

Tensors are encoded and written one at a time (large ones in row chunks),
into a temporary file in the output's folder that replaces the output only
once complete: an exception or Ctrl-C leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

import gguf

from edge_runtime.conversion.checkpoint import bf16_to_f32, f32_to_bf16, release_pages
from edge_runtime.errors import ConversionError

log = logging.getLogger(__name__)

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


def nearest_existing(path: Path) -> Path:
    """`path` if it is a folder, else its closest ancestor that exists."""
    path = Path(path).absolute()
    while not path.is_dir():
        path = path.parent
    return path


def check_writable(directory: Path) -> None:
    """Refuse an output folder that cannot take a new file, before any work is done."""
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".edge-runtime-write-check.")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise ConversionError(f"cannot write to {directory} ({exc.strerror}); choose another output folder") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Remove the temporary files and folders that a killed run of ours left next to `path`.

    Ours are named `.NAME.PID<suffix>.tmp`; one whose process no longer exists is stale.
    """
    prefix = f".{path.name}."
    for p in path.parent.glob(glob.escape(prefix) + "*.tmp"):
        pid = p.name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            log.warning("removed %s, left by an interrupted run", p)


def _write_failure(path: Path, exc: OSError) -> ConversionError | None:
    """The error to report for a failed write of `path`, or None when `exc` is not about writing it."""
    if exc.filename is not None and Path(exc.filename).parent.resolve() != path.parent.resolve():
        return None  # e.g. a source file that cannot be read
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ConversionError(f"{path}: the disk filled up while writing ({exc.strerror}); nothing was left behind. "
                               "Free some space or choose another output folder, then run again")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return ConversionError(f"cannot write {path} ({exc.strerror}); choose another output folder")
    return None


@contextlib.contextmanager
def _reported_as(path: Path) -> Iterator[None]:
    """Turn an OSError from writing `path` (disk full, unwritable) into a ConversionError naming it."""
    try:
        yield
    except OSError as exc:
        error = _write_failure(path, exc)
        if error is None:
            raise
        raise error from None


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path next to `path`; renamed onto `path` on success, removed on any failure.

    Temporary files left by an earlier run that was killed are removed first; a full disk or
    an unwritable folder is a ConversionError naming `path`.
    """
    path = Path(path)
    remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{suffix}")
    try:
        with _reported_as(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """A staging folder whose files reach `out_dir` only when the block succeeds.

    A new `out_dir` appears whole (one rename); in an existing one our files replace their
    namesakes one by one (each move atomic) and other files stay. A failure leaves nothing.
    """
    out_dir = Path(out_dir)
    home = nearest_existing(out_dir)  # on the destination's file system; missing folders are made at the end
    remove_stale_temps(home / out_dir.name)
    staging = home / f".{out_dir.name}.{os.getpid()}.staging.tmp"
    try:
        with _reported_as(staging):
            staging.mkdir()
            yield staging
            if out_dir.is_dir():
                for f in staging.iterdir():
                    os.replace(f, out_dir / f.name)
            else:
                out_dir.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def scratch_path(near: Path, suffix: str) -> Iterator[Path]:
    """A temporary file path next to `near`, always removed afterwards."""
    tmp = Path(near).with_name(f".{Path(near).name}.{os.getpid()}{suffix}")
    try:
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm byte counter on stderr (None when disabled or tqdm is missing)."""
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
        with progress_bar(total, desc, progress) as bar:
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
