"""The worker's front door: a handshake in front of llama.cpp's RPC stream, then a plain byte relay.

llama.cpp's RPC protocol has no authentication, so a worker never exposes llama.cpp's server: it listens on
loopback and this front faces the network. A client opens with `MAGIC`; the front answers with one JSON line
(protocol version, declared memory, a nonce, whether a key is needed); with a key both sides prove it by an
HMAC-SHA256 of both nonces (the client first, then the worker, so neither can be impersonated); then the
bytes flow unchanged. A plain llama.cpp client (first byte: its HELLO command) is relayed only by a worker
without a key. The channel authenticates; it does not encrypt (use a VPN or SSH tunnel across networks
you do not trust).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import InvalidArgumentError, RpcError

MAGIC = b"EDGE-RUNTIME-RPC/1\n"
LLAMA_HELLO = 14  # RPC_CMD_HELLO: the first byte every llama.cpp client sends
MIN_KEY_BYTES = 16
TIMEOUT_S = 5.0
_BUF = 1 << 20


def read_key(path: str | os.PathLike[str]) -> bytes:
    """The shared key: the first line of a file (make one with `edge-runtime rpc-worker --new-key FILE`)."""
    try:
        key = Path(path).read_bytes().strip().split(b"\n")[0].strip()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read the RPC key file {path}: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise InvalidArgumentError(
            f"the RPC key in {path} is {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes: "
            f"edge-runtime rpc-worker --new-key {path}")
    return key


def new_key(path: str | os.PathLike[str]) -> None:
    """Write a fresh random key readable by its owner only (copy the same file to every machine)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    os.replace(tmp, path)


def _mac(key: bytes, role: bytes, first: bytes, second: bytes) -> str:
    return hmac.new(key, role + b"|" + first + b"|" + second, hashlib.sha256).hexdigest()


def _send_line(sock: socket.socket, obj: dict) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def _recv_line(sock: socket.socket, limit: int = 4096) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
        if len(data) > limit:
            raise ConnectionError("handshake line too long")
    return json.loads(data)


@dataclass(frozen=True)
class WorkerHello:
    """What a worker tells a client before anything else."""

    proto: tuple[int, int, int]
    mem_bytes: int
    auth: bool
    nonce: str


def relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes; then close both (a lost peer ends the other side)."""

    def pump(src: socket.socket, dst: socket.socket) -> None:
        buf = bytearray(_BUF)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(buf)
                if not n:
                    break
                dst.sendall(view[:n])
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    for s in (a, b):
        s.settimeout(None)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = threading.Thread(target=pump, args=(b, a), daemon=True)
    t.start()
    pump(a, b)
    t.join()
    a.close()
    b.close()


def serve_handshake(sock: socket.socket, *, key: bytes | None, proto: tuple[int, int, int], mem_bytes: int) -> str:
    """Worker side. Returns "stream" (relay to llama.cpp), "probe" (done) or "plain" (a llama.cpp client,
    first byte already consumed: the caller forwards it); raises ConnectionError to refuse."""
    sock.settimeout(TIMEOUT_S)
    first = sock.recv(1)
    if first == bytes([LLAMA_HELLO]):
        if key is not None:
            raise ConnectionError("a plain llama.cpp client, but this worker needs the key")
        return "plain"
    rest = b""
    while len(first + rest) < len(MAGIC):
        chunk = sock.recv(len(MAGIC) - len(first + rest))
        if not chunk:
            raise ConnectionError("closed during the handshake")
        rest += chunk
    if first + rest != MAGIC:
        raise ConnectionError("not an edge-runtime or llama.cpp RPC client")
    nonce_w = secrets.token_hex(16)
    _send_line(sock, {"proto": list(proto), "mem": mem_bytes, "auth": key is not None, "nonce": nonce_w})
    req = _recv_line(sock)
    mode = req.get("mode") if req.get("mode") in ("stream", "probe") else "probe"
    if key is None:
        _send_line(sock, {"ok": True})
        return mode
    nonce_c = str(req.get("nonce", ""))
    if len(nonce_c) < 32 or not hmac.compare_digest(str(req.get("mac", "")),
                                                    _mac(key, b"client", nonce_w.encode(), nonce_c.encode())):
        _send_line(sock, {"ok": False, "error": "wrong key"})
        raise ConnectionError("a client with a wrong key")
    _send_line(sock, {"ok": True, "mac": _mac(key, b"worker", nonce_c.encode(), nonce_w.encode())})
    return mode


def client_handshake(sock: socket.socket, endpoint: str, *, key: bytes | None, mode: str) -> WorkerHello:
    """Client side: open the channel (mode "stream") or only ask the worker about itself ("probe")."""
    sock.settimeout(TIMEOUT_S)
    sock.sendall(MAGIC)
    try:
        hello = _recv_line(sock)
        worker = WorkerHello(tuple(hello["proto"]), int(hello["mem"]), bool(hello["auth"]), str(hello["nonce"]))
    except (ConnectionError, ValueError, KeyError, TypeError):
        raise _NotOurWorker() from None
    if worker.auth and key is None:
        raise RpcError(f"the RPC worker at {endpoint} requires a key: pass --rpc-key-file FILE with the file the "
                       "worker was started with (--key-file)")
    if key is not None and not worker.auth:
        raise RpcError(f"the RPC worker at {endpoint} does not ask for a key, but you gave one: start it with "
                       "--key-file (the same file), or leave out --rpc-key-file")
    nonce_c = secrets.token_hex(16)
    reply: dict = {"mode": mode, "nonce": nonce_c}
    if worker.auth:
        reply["mac"] = _mac(key, b"client", worker.nonce.encode(), nonce_c.encode())
    _send_line(sock, reply)
    try:
        answer = _recv_line(sock)
    except (ConnectionError, ValueError):
        answer = {"ok": False}
    if not answer.get("ok"):
        raise RpcError(f"the RPC worker at {endpoint} refused the key: use the same key file on both sides")
    if worker.auth and not hmac.compare_digest(str(answer.get("mac", "")),
                                               _mac(key, b"worker", nonce_c.encode(), worker.nonce.encode())):
        raise RpcError(f"the RPC worker at {endpoint} could not prove the key: it is not the worker you started "
                       "(or it has another key file)")
    return worker


class _NotOurWorker(Exception):
    """The endpoint does not speak our handshake (a stock llama.cpp rpc-server, or something else)."""
