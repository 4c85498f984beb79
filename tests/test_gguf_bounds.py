"""Hostile GGUF headers: refused by our reader with a clear error before llama.cpp can abort the process."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tracemalloc

import pytest

from edge_runtime.errors import InvalidModelError
from edge_runtime.gguf_file import read_header

UINT32, STRING, ARRAY = 4, 8, 9


def _patch_uint32(path, key: str, value: int) -> None:
    data = bytearray(path.read_bytes()[: 4 << 20])
    tag = struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", UINT32)
    at = data.index(tag) + len(tag)
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(struct.pack("<I", value))


@pytest.mark.parametrize("key, value, message", [
    ("gemma3.block_count", 100_000, "block_count = 100000"),
    ("gemma3.block_count", 0, "block_count = 0"),
    ("gemma3.embedding_length", 0, "embedding_length = 0"),
    ("gemma3.attention.head_count", 0, "head_count"),
])
def test_out_of_range_hyperparameters_are_refused_not_aborted(tmp_path, default_model_path, key, value, message):
    path = tmp_path / "bad.gguf"
    shutil.copy(default_model_path, path)
    _patch_uint32(path, key, value)
    # a separate process: before the fix llama.cpp's GGML_ASSERT killed it with SIGABRT
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "info", str(path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert message in proc.stderr and "corrupt" in proc.stderr
    assert "GGML_ASSERT" not in proc.stderr + proc.stdout


def _gguf(kv_bytes: bytes, n_kv: int = 1, pad: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, n_kv) + kv_bytes + b"\0" * pad


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


def test_nested_arrays_are_refused_without_recursion(tmp_path):
    depth = 100_000
    nested = b"".join(struct.pack("<IQ", ARRAY, 1) for _ in range(depth))  # element type array, one item, ...
    path = tmp_path / "nested.gguf"
    path.write_bytes(_gguf(_key("x") + struct.pack("<I", ARRAY) + nested + struct.pack("<IQ", UINT32, 0)))
    with pytest.raises(InvalidModelError, match="array of arrays"):
        read_header(path)


def test_lengths_are_checked_against_what_is_left_before_allocating(tmp_path):
    size = 32 << 20
    # an array of strings claiming more items than the rest of the file could hold
    claims = _key("tokens") + struct.pack("<IIQ", ARRAY, STRING, size // 8 + 1000)
    path = tmp_path / "claims.gguf"
    path.write_bytes(_gguf(claims, pad=size))
    tracemalloc.start()
    try:
        with pytest.raises(InvalidModelError, match="claims .* items, more than"):
            read_header(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak / 2**20:.1f} MiB allocated for a header that holds nothing"
    # a string longer than what is left
    path.write_bytes(_gguf(_key("name") + struct.pack("<IQ", STRING, size + 100) + b"x" * 16, pad=size))
    with pytest.raises(InvalidModelError, match="string claims"):
        read_header(path)
