"""`edge-runtime rpc-worker`, and the `--rpc` options every model-loading command shares."""

from __future__ import annotations

import argparse
import sys

from edge_runtime.errors import InvalidArgumentError


def add_rpc_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("several machines (llama.cpp RPC)")
    g.add_argument("--rpc", metavar="HOST:PORT[,...]",
                   help="run the model's layers on these `edge-runtime rpc-worker`s (none on this CPU)")
    g.add_argument("--rpc-split", metavar="W1,W2[,LOCAL]",
                   help="layer shares per worker (default: the memory each offers); a last extra weight keeps that "
                        "share on this machine")
    g.add_argument("--rpc-key-file", metavar="FILE", help="the workers' shared key (rpc-worker --key-file)")


def rpc_settings(args: argparse.Namespace):
    from edge_runtime.rpc.channel import read_key
    from edge_runtime.rpc.cluster import RpcSettings

    key_file = getattr(args, "rpc_key_file", None)
    return RpcSettings.parse(getattr(args, "rpc", None), getattr(args, "rpc_split", None),
                             read_key(key_file) if key_file else None)


def cmd_rpc_worker(args: argparse.Namespace) -> int:
    from edge_runtime.rpc.channel import new_key, read_key
    from edge_runtime.rpc.worker import RpcWorker, WorkerSettings

    if args.new_key:
        new_key(args.new_key)
        print(f"wrote a new key to {args.new_key}; copy it to every machine and pass --key-file / --rpc-key-file")
        return 0
    if args.threads is not None and args.threads < 1:
        raise InvalidArgumentError(f"--threads must be at least 1, not {args.threads}")
    settings = WorkerSettings(host=args.host, port=args.port, n_threads=args.threads, mem_mb=args.mem,
                              cache_dir=args.cache, key=read_key(args.key_file) if args.key_file else None,
                              insecure=args.insecure)
    with RpcWorker(settings) as worker:
        auth = "key required" if settings.key else "no key: loopback only" if not settings.insecure else \
            "NO KEY (--insecure)"
        print(f"[rpc-worker at {worker.endpoint}, offering {worker.mem_bytes // 2**20} MiB; {auth}; Ctrl-C to stop]",
              file=sys.stderr, flush=True)
        try:
            worker.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rpc-worker", help="lend this machine's CPU and RAM to a model run elsewhere (--rpc)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; another address needs --key-file)")
    p.add_argument("--port", type=int, default=50052, help="port (default 50052; 0: any free port)")
    p.add_argument("-t", "--threads", type=int, help="compute threads (default: all cores)")
    p.add_argument("--mem", type=int, metavar="MB",
                   help="memory to offer clients, which split layers by it (default: this machine's RAM)")
    p.add_argument("--cache", metavar="DIR", help="keep received weights here so a reconnecting client loads faster")
    p.add_argument("--key-file", metavar="FILE", help="accept only clients that prove this shared key")
    p.add_argument("--new-key", metavar="FILE", help="write a new random key to FILE and exit")
    p.add_argument("--insecure", action="store_true",
                   help="listen on a non-loopback address without a key (anyone who reaches it can use it)")
    p.set_defaults(func=cmd_rpc_worker)
