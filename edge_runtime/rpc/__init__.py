"""One model over several machines with llama.cpp's RPC backend, made safe: endpoints probed before
llama.cpp touches them, an authenticated channel, and the weights in a child process so a lost worker
is an error, not the end of the program."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# (`probe` the function lives in edge_runtime.rpc.probe: the submodule's name would shadow it here)
_LAZY = {"LayerSplit": "cluster", "RpcCluster": "cluster", "RpcSettings": "cluster", "WorkerInfo": "probe",
         "RpcWorker": "worker", "WorkerSettings": "worker"}

if TYPE_CHECKING:
    from edge_runtime.rpc.cluster import LayerSplit, RpcCluster, RpcSettings
    from edge_runtime.rpc.probe import WorkerInfo
    from edge_runtime.rpc.worker import RpcWorker, WorkerSettings


def __getattr__(name: str):  # loaded on first use: `import edge_runtime.rpc.cli` stays light
    if name in _LAZY:
        return getattr(importlib.import_module(f"edge_runtime.rpc.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'edge_runtime.rpc' has no attribute {name!r}")


__all__ = ["LayerSplit", "RpcCluster", "RpcSettings", "RpcWorker", "WorkerInfo", "WorkerSettings"]
