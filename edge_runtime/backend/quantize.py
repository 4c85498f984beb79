"""llama.cpp's quantizer (`llama_model_quantize`) and its importance-matrix input."""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import llama_cpp as lc

from edge_runtime.backend.core import ensure_backend, recent_llama_errors
from edge_runtime.errors import ConversionError


def load_imatrix(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Importance matrix per tensor: llama.cpp's GGUF imatrix (sums / counts) or the legacy .dat format."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: imatrix file is missing")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return _load_gguf_imatrix(path)
    return _load_legacy_imatrix(path)


def _load_gguf_imatrix(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader raises many kinds on a corrupt file
        raise ConversionError(f"{path}: not a readable imatrix GGUF ({exc})") from None
    sums = {t.name[: -len(".in_sum2")]: np.asarray(t.data, dtype=np.float32) for t in reader.tensors if t.name.endswith(".in_sum2")}
    counts = {t.name[: -len(".counts")]: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors if t.name.endswith(".counts")}
    out: dict[str, np.ndarray] = {}
    for name, s in sums.items():
        c = counts.get(name)
        if c is None or c.size == 0:
            raise ConversionError(f"{path}: imatrix entry {name} has no counts")
        rows = s.reshape(c.size, -1)
        values = np.where(c[:, None] > 0, rows / np.maximum(c[:, None], 1e-30), 1.0)
        out[name] = np.ascontiguousarray(values.reshape(-1), dtype=np.float32)
    if not out:
        raise ConversionError(f"{path}: no imatrix entries (*.in_sum2 tensors)")
    return out


def _load_legacy_imatrix(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    out: dict[str, np.ndarray] = {}
    try:
        (n,) = struct.unpack_from("<i", data, 0)
        pos = 4
        if not 0 < n < 1_000_000:
            raise ValueError
        for _ in range(n):
            (length,) = struct.unpack_from("<i", data, pos)
            name = data[pos + 4 : pos + 4 + length].decode("utf-8")
            pos += 4 + length
            ncall, nval = struct.unpack_from("<ii", data, pos)
            pos += 8
            values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
            pos += 4 * nval
            out[name] = values / ncall if ncall > 0 else values
    except (struct.error, ValueError, UnicodeDecodeError):
        raise ConversionError(f"{path}: not an imatrix file (neither GGUF nor llama.cpp's legacy .dat)") from None
    return out


def quantize_model(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    ftype: int,
    *,
    n_threads: int = 2,
    imatrix: dict[str, np.ndarray] | None = None,
    max_buf_mib: int = 128,
    allow_requantize: bool = False,
) -> None:
    """Quantize a GGUF file (F32/F16/BF16 weights) to `ftype` (a llama_ftype value) with llama.cpp's type plan.

    `llama_model_quantize` is one native call with no way to stop it, so it runs in a child
    process (`python -m edge_runtime.backend.quantize`, never a re-run of the caller's script):
    Ctrl-C or SIGTERM here ends the child at once and the caller cleans up.
    """
    with tempfile.TemporaryDirectory(prefix="edge-runtime-quantize-") as scratch:
        args = [sys.executable, "-m", "edge_runtime.backend.quantize", os.fspath(src), os.fspath(dst),
                str(int(ftype)), str(int(n_threads)), str(int(max_buf_mib))]
        if imatrix:
            path = os.path.join(scratch, "imatrix.npz")
            np.savez(path, **{f"t{i}": v for i, v in enumerate(imatrix.values())},
                     names=np.array(list(imatrix), dtype=object))
            args.append(path)
        env = {**os.environ, "EDGE_RUNTIME_ALLOW_REQUANTIZE": "1" if allow_requantize else "0",
               "EDGE_RUNTIME_QUANTIZE_PARENT": str(os.getpid())}
        child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        try:
            _, err = child.communicate()
        except BaseException:  # KeyboardInterrupt, or Terminated from the CLI's SIGTERM handler
            child.terminate()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            raise
    if child.returncode != 0:
        lines = [line for line in (err or "").splitlines() if line.strip()]
        reason = lines[-1] if lines else f"the quantizer process ended with exit code {child.returncode}"
        raise ConversionError(f"llama.cpp could not quantize {src} to {dst}: {reason}")


def _child_main(argv: list[str]) -> int:
    """`python -m edge_runtime.backend.quantize SRC DST FTYPE THREADS MAX_BUF_MIB [IMATRIX.npz]`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it terminates us when interrupted
    src, dst, ftype, n_threads, max_buf_mib = argv[:5]
    # the pid from the parent itself: one killed before we got here has already left getppid()
    _exit_with_parent(int(os.environ.get("EDGE_RUNTIME_QUANTIZE_PARENT", os.getppid())), Path(dst))
    imatrix = None
    if len(argv) > 5:
        with np.load(argv[5], allow_pickle=True) as data:
            names = list(data["names"])
            imatrix = {name: data[f"t{i}"] for i, name in enumerate(names)}
    try:
        _quantize_here(src, dst, int(ftype), int(n_threads), imatrix, int(max_buf_mib))
    except ConversionError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def _exit_with_parent(parent: int, dst: Path) -> None:
    """End this process (and remove its half-written output) when the parent is gone.

    A parent killed outright (SIGKILL, the OOM killer) cannot stop us; without this the
    quantizer would run on for minutes, unseen, and finish a file nobody renames. ctypes
    releases the GIL during llama_model_quantize, so the watch runs beside it.
    """
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.25)
        dst.unlink(missing_ok=True)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _quantize_here(src: str, dst: str, ftype: int, n_threads: int,
                   imatrix: dict[str, np.ndarray] | None, max_buf_mib: int) -> None:
    ensure_backend()
    params = lc.llama_model_quantize_default_params()
    params.nthread = n_threads
    params.ftype = ftype
    params.allow_requantize = os.environ.get("EDGE_RUNTIME_ALLOW_REQUANTIZE") == "1"
    # rows of one tensor held as f32 at a time (llama.cpp's default is 8 GiB, i.e. whole tensors)
    params.max_buf_size = max_buf_mib << 20
    keep: list[object] = []  # the C side only borrows these buffers
    if imatrix:
        entries = (lc.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            raw_name = name.encode("utf-8")
            keep += [arr, raw_name]
            entries[i].name = raw_name
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(imatrix)].name = None  # terminator
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(lc.llama_model_imatrix_data))
    recent_llama_errors()
    rc = lc.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    del keep
    if rc != 0:
        raise ConversionError("; ".join(recent_llama_errors()) or f"error code {rc}")


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
