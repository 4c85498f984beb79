"""One model over two RPC workers on this machine: load time and generation speed, same run.

    python tools/bench_rpc.py [--tokens 64] [--rounds 3] [--model GGUF]

Contenders, interleaved round by round (the default model, greedy, one thread per worker):
  local     the model in this process (no RPC), 2 threads
  direct    llama.cpp's RPC server with nothing in front (the anchor: what llama.cpp's `--rpc` gives)
  plain     `edge-runtime rpc-worker` without a key (our front relays llama.cpp's stream)
  keyed     `edge-runtime rpc-worker --key-file` (HMAC handshake, relays on both sides)
Prints medians and the ratios keyed/direct and plain/direct (target: keyed >= 0.90 of direct).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "The history of the Roman empire"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(kind: str, key_file: Path) -> tuple[subprocess.Popen, str]:
    if kind == "direct":
        port = _free_port()
        code = f"from edge_runtime.backend.rpc import serve; serve('127.0.0.1:{port}', 1)"
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=ROOT)
        endpoint = f"127.0.0.1:{port}"
        from edge_runtime.rpc.probe import probe

        for _ in range(200):
            try:
                probe(endpoint)
                break
            except Exception:
                time.sleep(0.05)
        return proc, endpoint
    args = ["--key-file", str(key_file)] if kind == "keyed" else []
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "rpc-worker", "--port", "0", "--threads", "1", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    while True:
        line = proc.stderr.readline()
        m = re.search(r"rpc-worker at (\S+),", line)
        if m:
            return proc, m.group(1)
        if not line:
            raise RuntimeError("rpc-worker did not start")


def measure(model_path, kind: str, key_file: Path, tokens: int) -> tuple[float, float]:
    from edge_runtime import load_model
    from edge_runtime.rpc import RpcSettings
    from edge_runtime.rpc.channel import read_key

    workers = [] if kind == "local" else [start_worker(kind, key_file) for _ in range(2)]
    try:
        rpc = RpcSettings(tuple(ep for _, ep in workers), key=read_key(key_file) if kind == "keyed" else None) \
            if workers else None
        t = time.perf_counter()
        with load_model(model_path, n_ctx=512, n_threads=2, rpc=rpc) as model:
            load_s = time.perf_counter() - t
            model.generate(PROMPT, temperature=0, max_tokens=4)  # warm the graph
            model.reset()
            result = model.generate(PROMPT, temperature=0, max_tokens=tokens)
        return load_s, result.metrics.gen_tps
    finally:
        for proc, _ in workers:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", help="GGUF (default: the embedded model)")
    args = parser.parse_args()
    from edge_runtime.rpc.channel import new_key

    kinds = ["local", "direct", "plain", "keyed"]
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as d:
        key_file = Path(d) / "rpc.key"
        new_key(key_file)
        for r in range(args.rounds):
            for kind in kinds:
                results[kind].append(measure(args.model, kind, key_file, args.tokens))
                print(f"round {r + 1} {kind:7} load {results[kind][-1][0]:.2f} s, {results[kind][-1][1]:.1f} tok/s",
                      file=sys.stderr)
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in results.items()}
    print(f"{'contender':10} {'load s':>8} {'tok/s':>8}")
    for k in kinds:
        print(f"{k:10} {med[k][0]:8.2f} {med[k][1]:8.1f}")
    keyed, plain, direct = med["keyed"][1], med["plain"][1], med["direct"][1]
    print(f"keyed/direct {keyed / direct:.3f} (target >= 0.90), plain/direct {plain / direct:.3f}, "
          f"direct/local {direct / med['local'][1]:.3f}; load keyed/direct {med['keyed'][0] / med['direct'][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
