"""Ask a worker about itself before llama.cpp connects: llama.cpp ends the whole process on an endpoint
that does not answer or speaks another protocol version, so every endpoint is checked here first."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from edge_runtime.backend.rpc import PROTO_VERSION
from edge_runtime.errors import InvalidArgumentError, RpcError
from edge_runtime.rpc.channel import LLAMA_HELLO, TIMEOUT_S, _NotOurWorker, client_handshake

_CAPS = 24  # RPC_CONN_CAPS_SIZE
_GET_DEVICE_MEMORY = 11


@dataclass(frozen=True)
class WorkerInfo:
    endpoint: str
    proto: tuple[int, int, int]
    mem_bytes: int
    auth: bool
    kind: str  # "edge-runtime" (our worker) or "llama.cpp" (a stock rpc-server, no key possible)


def parse_endpoints(text: str) -> list[str]:
    """"HOST:PORT[,HOST:PORT...]" -> endpoints, checked for form (llama.cpp aborts on a malformed one)."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgumentError(f"--rpc: {item!r} is not HOST:PORT (e.g. 192.168.1.20:50052)")
        if item in out:
            raise InvalidArgumentError(f"--rpc names {item} twice")
        out.append(item)
    if len(out) > 16:
        raise InvalidArgumentError(f"--rpc names {len(out)} workers; llama.cpp takes at most 16")
    return out


def connect(endpoint: str) -> socket.socket:
    host, _, port = endpoint.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=TIMEOUT_S)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise RpcError(f"cannot reach the RPC worker at {endpoint} ({why}): start it there with "
                       f"`edge-runtime rpc-worker --host ADDRESS --port {port}` and check the address") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def check_version(endpoint: str, proto: tuple[int, ...]) -> None:
    if proto[0] != PROTO_VERSION[0] or proto[1] > PROTO_VERSION[1]:
        ours = ".".join(map(str, PROTO_VERSION))
        theirs = ".".join(map(str, proto))
        raise RpcError(f"the RPC worker at {endpoint} speaks protocol {theirs}, this runtime {ours}: install the same "
                       "llama-cpp-python version (0.3.36) on every machine")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _plain_probe(endpoint: str) -> WorkerInfo:
    """A stock llama.cpp rpc-server: its own HELLO, then the memory it reports for device 0."""
    with connect(endpoint) as sock:
        sock.settimeout(TIMEOUT_S)
        try:
            sock.sendall(struct.pack("<BQ", LLAMA_HELLO, _CAPS) + bytes(_CAPS))
            size, = struct.unpack("<Q", _recv_exact(sock, 8))
            if size != 4 + _CAPS:
                raise ConnectionError("unexpected HELLO size")
            proto = tuple(_recv_exact(sock, size)[:3])
            check_version(endpoint, proto)
            sock.sendall(struct.pack("<BQI", _GET_DEVICE_MEMORY, 4, 0))
            size, = struct.unpack("<Q", _recv_exact(sock, 8))
            free, _total = struct.unpack("<QQ", _recv_exact(sock, 16))
        except (OSError, ConnectionError, struct.error):
            raise RpcError(f"{endpoint} answered, but not as an RPC worker (neither edge-runtime's nor llama.cpp's): "
                           "check the port") from None
    return WorkerInfo(endpoint, proto, int(free), False, "llama.cpp")


def probe(endpoint: str, key: bytes | None = None) -> WorkerInfo:
    """Connect, check the protocol version and the key, and learn the memory the worker offers."""
    with connect(endpoint) as sock:
        try:
            hello = client_handshake(sock, endpoint, key=key, mode="probe")
        except _NotOurWorker:
            hello = None
        except OSError as exc:
            raise RpcError(f"the RPC worker at {endpoint} stopped answering during the handshake "
                           f"({exc.strerror or type(exc).__name__})") from None
    if hello is None:
        if key is not None:
            raise RpcError(f"{endpoint} is not an edge-runtime worker, so it cannot check a key: start "
                           "`edge-runtime rpc-worker --key-file FILE` there")
        return _plain_probe(endpoint)
    check_version(endpoint, hello.proto)
    return WorkerInfo(endpoint, hello.proto, hello.mem_bytes, hello.auth, "edge-runtime")
