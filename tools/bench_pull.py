"""Pull throughput and packaging cost, same run.

    python tools/bench_pull.py [--rounds 3]

Pull: the default model (241 MiB) and the same weights as F32 (1 GiB), unthrottled and at 110 MB/s (what a
gigabit link delivers: downloads are network-bound, and that is where our sha256 must cost nothing), served by the tests' Hub stand-in on 127.0.0.1 (LFS redirect to a second
port, as the Hub does); `edge-runtime pull` (our transfer: resumable, sha256 hashed as it arrives) vs
huggingface-hub's `hf_hub_download` alone (the anchor), each in a fresh process with an empty cache,
interleaved. Target: ours >= 0.95x the anchor's throughput.

Package: `edge-runtime package --target ios` (512 MiB shards) of the default model and of a 1 GiB model
(the same weights dequantized to F32 by llama.cpp), wall time and peak RSS of the process. Target: peak RSS
under 300 MB: the data is copied file to file, never held.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

REPO, FILE = "ggml-org/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf"
# VmHWM, not ru_maxrss: Linux keeps a forked parent's ru_maxrss across exec, VmHWM starts afresh
PEAK = ("import runpy, sys; sys.argv = ['edge-runtime', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('edge_runtime', run_name='__main__')\n"
        "finally:\n    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "    print('PEAK_KB', hwm, file=sys.stderr)\n")


def _env(hub_url: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    return {**env, "HF_ENDPOINT": hub_url, "HF_HOME": str(home / "hf"), "EDGE_RUNTIME_HOME": str(home / "er"),
            "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}


def time_pull(hub_url: str, which: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        env = _env(hub_url, Path(d))
        if which == "ours":
            cmd = [sys.executable, "-m", "edge_runtime", "pull", f"{REPO}:Q4_K_M", "--json"]
        else:
            cmd = [sys.executable, "-c", f"from huggingface_hub import hf_hub_download as h; h('{REPO}', '{FILE}')"]
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return time.perf_counter() - t


def package_cost(model: Path) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", PEAK, "package", str(model), "--target", "ios", "-o",
                               str(Path(d) / "bundle"), "--json"], capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        return wall, int(proc.stderr.split("PEAK_KB")[1].split()[0]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from hub_standin import HubStandIn

    from edge_runtime.backend.quantize import quantize_model
    from edge_runtime.default_model import default_model_path

    model = default_model_path()
    with tempfile.TemporaryDirectory() as d:
        big = Path(d) / "gemma-3-270m-f32.gguf"
        quantize_model(model, big, 0, allow_requantize=True)  # LLAMA_FTYPE_ALL_F32: the same weights, 1 GiB
        for path, limit in ((model, None), (big, None), (big, 110e6)):
            size_mb = path.stat().st_size / 2**20
            times: dict[str, list[float]] = {"ours": [], "hf_hub_download": []}
            with HubStandIn() as hub:
                hub.state.add(REPO, {FILE: path})
                hub.state.slow_bytes_per_s = limit
                for r in range(args.rounds):
                    for which in times:
                        times[which].append(time_pull(hub.url, which))
                        print(f"round {r + 1} {which:16} {size_mb / times[which][-1]:7.1f} MB/s", file=sys.stderr)
            rate = {k: size_mb / statistics.median(v) for k, v in times.items()}
            regime = "loopback, CPU-bound" if limit is None else f"served at {limit / 1e6:.0f} MB/s (a gigabit link)"
            print(f"pull {size_mb:5.0f} MiB ({regime}): ours {rate['ours']:.1f} MB/s, hf_hub_download "
                  f"{rate['hf_hub_download']:.1f} MB/s, ratio {rate['ours'] / rate['hf_hub_download']:.3f} "
                  "(target >= 0.95)")
        for path in (model, big):
            wall, peak = package_cost(path)
            print(f"package {path.stat().st_size / 2**20:5.0f} MiB -> ios shards: {wall:.2f} s, peak RSS {peak:.0f} MB "
                  f"(target < 300 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
