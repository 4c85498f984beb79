"""The client's side of a model spread over RPC workers: probe them, open authenticated channels, register
their devices with llama.cpp and split the layers."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.backend import rpc as backend_rpc
from edge_runtime.errors import InvalidArgumentError, RpcError
from edge_runtime.rpc.channel import client_handshake, relay
from edge_runtime.rpc.probe import WorkerInfo, connect, parse_endpoints, probe


@dataclass(frozen=True)
class RpcSettings:
    """`--rpc`, `--rpc-split` and `--rpc-key-file` as the runtime keeps them."""

    endpoints: tuple[str, ...] = ()
    split: tuple[float, ...] | None = None  # one weight per worker, plus optionally one for the local CPU
    key: bytes | None = None

    @classmethod
    def parse(cls, rpc: str | None, split: str | None = None, key: bytes | None = None) -> "RpcSettings":
        if not rpc:
            if split or key:
                raise InvalidArgumentError("--rpc-split and --rpc-key-file need --rpc HOST:PORT[,...]")
            return cls()
        endpoints = tuple(parse_endpoints(rpc))
        weights = None
        if split:
            try:
                weights = tuple(float(w) for w in split.split(","))
            except ValueError:
                raise InvalidArgumentError(f"--rpc-split {split!r}: give numbers, e.g. 3,1") from None
            if len(weights) not in (len(endpoints), len(endpoints) + 1) or min(weights) < 0 or sum(weights) <= 0:
                raise InvalidArgumentError(
                    f"--rpc-split {split!r}: give {len(endpoints)} non-negative weights (one per worker, in --rpc "
                    f"order), or {len(endpoints) + 1} to keep the last share on this machine's CPU")
        return cls(endpoints, weights, key)


@dataclass(frozen=True)
class LayerSplit:
    """How the layers go: to each worker (in order) and to the local CPU."""

    workers: tuple[WorkerInfo, ...]
    shares: tuple[float, ...]  # per worker, summing to the offloaded fraction
    local_share: float
    reason: str

    def n_gpu_layers(self, n_layer: int) -> int:
        """llama.cpp's `n_gpu_layers`: the last layers and the output go to the workers, the first to this CPU."""
        return n_layer + 1 - round(n_layer * self.local_share)

    def layers(self, n_layer: int) -> tuple[list[int], int, str]:
        """Repeating layers per worker and on this CPU, and where the output layer goes: llama.cpp's own
        assignment (`llama-model.cpp`: cumulative float32 split points, an upper bound per layer)."""
        n_gpu = self.n_gpu_layers(n_layer)
        start, act = n_layer + 1 - n_gpu, min(n_gpu, n_layer + 1)
        points = np.cumsum(np.asarray(self.shares, np.float32), dtype=np.float32)
        points = points / points[-1]
        per, local, output = [0] * len(self.shares), 0, "local"
        for il in range(n_layer + 1):
            if il < start:
                dev = -1
            else:
                dev = int(np.searchsorted(points, np.float32((il - start) / act), side="right"))
            if il == n_layer:
                output = self.workers[dev].endpoint if dev >= 0 else "local"
            elif dev < 0:
                local += 1
            else:
                per[dev] += 1
        return per, local, output

    def as_dict(self, n_layer: int | None = None) -> dict:
        out: dict = {"workers": [{"endpoint": w.endpoint, "kind": w.kind, "auth": w.auth,
                                  "mem_mb": w.mem_bytes // 2**20, "share": round(s, 4)}
                                 for w, s in zip(self.workers, self.shares)],
                     "local_share": round(self.local_share, 4), "reason": self.reason}
        if n_layer:
            per, local, output = self.layers(n_layer)
            for w, n in zip(out["workers"], per):
                w["layers"] = n
            out["local_layers"], out["output_layer"] = local, output
        return out


def plan_split(settings: RpcSettings, workers: list[WorkerInfo]) -> LayerSplit:
    if settings.split:
        weights = list(settings.split)
        local = weights.pop() if len(weights) > len(workers) else 0.0
        total = sum(weights) + local
        return LayerSplit(tuple(workers), tuple(w / total for w in weights), local / total, "--rpc-split")
    mem = [w.mem_bytes for w in workers]
    total = sum(mem) or 1
    return LayerSplit(tuple(workers), tuple(m / total for m in mem), 0.0,
                      "in proportion to the memory each worker offers (rpc-worker --mem)")


def probe_all(settings: RpcSettings) -> LayerSplit:
    """Probe every worker (clear errors before llama.cpp touches any) and plan the split."""
    backend_rpc._rpc()
    return plan_split(settings, [probe(ep, settings.key) for ep in settings.endpoints])


class _LocalRelay:
    """A loopback port for llama.cpp that opens an authenticated channel to one worker per connection."""

    def __init__(self, endpoint: str, key: bytes) -> None:
        self.endpoint, self.key = endpoint, key
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True, name=f"rpc-relay {endpoint}").start()

    def _accept(self) -> None:
        while True:
            try:
                local, _ = self._sock.accept()
            except OSError:
                return
            try:
                remote = connect(self.endpoint)
                client_handshake(remote, self.endpoint, key=self.key, mode="stream")
            except (RpcError, OSError, Exception):  # llama.cpp sees a closed socket and gives up on this worker
                local.close()
                continue
            threading.Thread(target=relay, args=(local, remote), daemon=True).start()

    def close(self) -> None:
        self._sock.close()


@dataclass
class RpcCluster:
    """Workers registered with this process's llama.cpp (for good: llama.cpp cannot unregister them)."""

    settings: RpcSettings
    split: LayerSplit = field(init=False)
    _relays: list[_LocalRelay] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.split = probe_all(self.settings)
        self._addresses = []
        for worker in self.split.workers:
            if worker.auth:
                r = _LocalRelay(worker.endpoint, self.settings.key)
                self._relays.append(r)
                self._addresses.append(r.address)
            else:
                self._addresses.append(worker.endpoint)
        for address in self._addresses:
            backend_rpc.add_server(address)

    def model_params(self, n_layer: int) -> tuple[int, list[float]]:
        """`n_gpu_layers` and `tensor_split` for llama.cpp (RPC devices count as GPUs, in registration order)."""
        share = dict(zip(self._addresses, self.split.shares))
        tensor_split, seen = [], set()
        for ep in backend_rpc.registered_devices():  # a worker with several devices: its share on the first
            tensor_split.append(share.get(ep, 0.0) if ep not in seen else 0.0)
            seen.add(ep)
        return self.split.n_gpu_layers(n_layer), tensor_split

    def close(self) -> None:
        for r in self._relays:
            r.close()
