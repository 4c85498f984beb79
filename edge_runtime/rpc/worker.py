"""`edge-runtime rpc-worker`: llama.cpp's RPC server from the installed library, on loopback, behind our front.

The front (channel.py) is the only socket that faces the network: it checks the key (when one is set),
tells clients the memory this worker offers (`--mem`, since llama.cpp's CPU device reports the whole host's
RAM) and relays the bytes to llama.cpp's server.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from edge_runtime.backend import rpc as backend_rpc
from edge_runtime.errors import InvalidArgumentError, RpcError
from edge_runtime.rpc.channel import LLAMA_HELLO, relay, serve_handshake

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    host: str = "127.0.0.1"
    port: int = 50052
    n_threads: int | None = None
    mem_mb: int | None = None  # what clients may place here; default: this machine's RAM
    cache_dir: str | None = None  # llama.cpp keeps large tensors here by hash, so a restart loads them locally
    key: bytes | None = None
    insecure: bool = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def total_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RpcWorker:
    """`with RpcWorker(settings) as w: w.serve_forever()`; `w.endpoint` is where clients connect."""

    def __init__(self, settings: WorkerSettings) -> None:
        if settings.key is None and not is_loopback(settings.host) and not settings.insecure:
            raise InvalidArgumentError(
                f"refusing to listen on {settings.host} without a key: llama.cpp's RPC protocol has no "
                "authentication and known memory-safety bugs, so anyone who reaches the port could run code here. "
                "Create a key (edge-runtime rpc-worker --new-key rpc.key), copy it to the client, and start with "
                "--key-file rpc.key (or, on a network you fully trust, add --insecure)")
        if settings.mem_mb is not None and settings.mem_mb < 1:
            raise InvalidArgumentError(f"--mem must be a positive number of MB, not {settings.mem_mb}")
        backend_rpc._rpc()  # the clear "built without RPC" error, before any socket
        self.settings = settings
        self.mem_bytes = settings.mem_mb * 2**20 if settings.mem_mb else total_memory_bytes()
        self.backend = f"127.0.0.1:{_free_loopback_port()}"
        self._front = socket.create_server((settings.host, settings.port), reuse_port=False)
        self.endpoint = f"{settings.host}:{self._front.getsockname()[1]}"
        self._closed = threading.Event()
        n_threads = settings.n_threads or max(1, (os.cpu_count() or 2))
        threading.Thread(target=self._run_llama, args=(n_threads,), daemon=True, name="llama-rpc").start()
        self._wait_for_backend()

    def _run_llama(self, n_threads: int) -> None:
        try:
            backend_rpc.serve(self.backend, n_threads, self.settings.cache_dir)
        except RpcError as exc:
            log.error("%s", exc)

    def _wait_for_backend(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(self.backend.split(":"), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RpcError(f"llama.cpp's RPC server did not start on {self.backend}")

    def serve_forever(self) -> None:
        while not self._closed.is_set():
            try:
                conn, peer = self._front.accept()
            except OSError:
                break
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn: socket.socket, peer: tuple) -> None:
        try:
            mode = serve_handshake(conn, key=self.settings.key, proto=backend_rpc.PROTO_VERSION,
                                   mem_bytes=self.mem_bytes)
        except (OSError, ConnectionError, ValueError) as exc:
            log.warning("refused %s:%s: %s", peer[0], peer[1], exc)
            conn.close()
            return
        if mode == "probe":
            conn.close()
            return
        log.info("client %s:%s connected (%s)", peer[0], peer[1], "authenticated" if self.settings.key else mode)
        try:
            upstream = socket.create_connection(self.backend.split(":"))
        except OSError:
            conn.close()
            return
        if mode == "plain":
            upstream.sendall(bytes([LLAMA_HELLO]))
        relay(conn, upstream)
        log.info("client %s:%s left", peer[0], peer[1])

    def close(self) -> None:
        self._closed.set()
        self._front.close()

    def __enter__(self) -> "RpcWorker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
