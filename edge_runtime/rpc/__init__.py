"""One model over several machines with llama.cpp's RPC backend, made safe: endpoints probed before
llama.cpp touches them, an authenticated channel, and the weights in a child process so a lost worker
is an error, not the end of the program."""

from edge_runtime.rpc.cluster import LayerSplit, RpcCluster, RpcSettings
from edge_runtime.rpc.probe import WorkerInfo, probe
from edge_runtime.rpc.worker import RpcWorker, WorkerSettings

__all__ = ["LayerSplit", "RpcCluster", "RpcSettings", "RpcWorker", "WorkerInfo", "WorkerSettings", "probe"]
