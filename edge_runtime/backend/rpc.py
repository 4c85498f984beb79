"""llama.cpp's RPC backend (`libggml-rpc`) through ctypes: the worker's server loop and the client's devices.

llama-cpp-python 0.3.36 builds the library when installed with `CMAKE_ARGS="-DGGML_RPC=on"` but binds none of
it (`Llama(rpc_servers=...)` is a no-op), so this module calls what llama.cpp's own `--rpc` does.
"""

from __future__ import annotations

import ctypes
import os


from edge_runtime.backend.core import ensure_backend, lib_dir
from edge_runtime.errors import RpcError

# ggml/include/ggml-rpc.h of the llama.cpp we pin: a client refuses another major or a newer minor version.
PROTO_VERSION = (7, 0, 0)

REBUILD_HINT = ('reinstall llama-cpp-python with RPC: CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall '
                '--no-cache-dir --no-binary llama-cpp-python llama-cpp-python==0.3.36 (pip otherwise reuses a '
                'cached build without it)')

_libs: dict[str, ctypes.CDLL] = {}


def _load(name: str) -> ctypes.CDLL | None:
    if name not in _libs:
        # by soname: wheels hold copies, not symlinks, so "libggml.so" would be a second ggml with its own
        # device registry, and llama.cpp (linked against libggml.so.0) would never see the workers
        for path in (lib_dir() / f"lib{name}.so.0", lib_dir() / f"lib{name}.so"):
            if path.exists():
                _libs[name] = ctypes.CDLL(str(path))
                break
        else:
            return None
    return _libs[name]


def rpc_available() -> bool:
    """Whether the installed llama.cpp was built with its RPC backend."""
    return _load("ggml-rpc") is not None


def _rpc() -> ctypes.CDLL:
    lib = _load("ggml-rpc")
    if lib is None:
        raise RpcError(f"this llama.cpp was built without RPC support ({lib_dir()} has no libggml-rpc.so); "
                       + REBUILD_HINT)
    return lib


def add_server(endpoint: str) -> int:
    """Register a worker's devices with llama.cpp (process-wide, for good); returns how many it has.

    llama.cpp connects here and ends the process if the endpoint does not answer: probe it first
    (`edge_runtime.rpc.probe`)."""
    ensure_backend()
    rpc = _rpc()
    ggml = _load("ggml")
    rpc.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    rpc.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    ggml.ggml_backend_register.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    if endpoint in _registered:
        return _registered[endpoint]
    reg = rpc.ggml_backend_rpc_add_server(endpoint.encode())
    if not reg:
        raise RpcError(f"the RPC worker at {endpoint} reports no devices")
    ggml.ggml_backend_register(reg)
    _registered[endpoint] = int(ggml.ggml_backend_reg_dev_count(reg))
    return _registered[endpoint]


_registered: dict[str, int] = {}


def registered_devices() -> list[str]:
    """The endpoint of every RPC device llama.cpp knows, in its device order."""
    return [ep for ep, n in _registered.items() for _ in range(n)]


def serve(endpoint: str, n_threads: int, cache_dir: str | None = None) -> None:
    """Run llama.cpp's RPC server on the CPU device at `endpoint` ("127.0.0.1:PORT"). Never returns
    unless the socket cannot be opened; it serves one client at a time."""
    ensure_backend()
    rpc = _rpc()
    ggml = _load("ggml")
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    cpu = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    if not cpu:
        raise RpcError("llama.cpp has no CPU device to serve")
    devices = (ctypes.c_void_p * 1)(cpu)
    rpc.ggml_backend_rpc_start_server.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                                                  ctypes.c_size_t, ctypes.c_void_p]
    rpc.ggml_backend_rpc_start_server.restype = None
    rpc.ggml_backend_rpc_start_server(endpoint.encode(), os.fsencode(cache_dir) if cache_dir else None,
                                      n_threads, 1, devices)
    raise RpcError(f"llama.cpp's RPC server could not listen on {endpoint}")

