"""Benchmark: Gemma 3 270M checkpoint -> f16 GGUF -> Q4_K_M, ours vs llama.cpp's convert_hf_to_gguf.py.

The checkpoint is the real 270M (embedded Q4_K_M GGUF) unpacked to f32 safetensors by our own
unpack. Each step runs in a fresh subprocess; wall time and peak RSS (ru_maxrss of that child)
are measured for it. llama.cpp's converter is run from the llama-cpp-python sdist with its own
gguf-py on PYTHONPATH (it needs torch); both f16 files are quantized by the same
`llama_model_quantize` call.

    python tools/bench_convert.py --sdist /tmp/sdist/llama_cpp_python-0.3.36 [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_child(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd`; wall seconds and the child's peak RSS in MiB."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(out.decode(errors="replace")[-4000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdist", default="/tmp/sdist/llama_cpp_python-0.3.36", help="unpacked llama-cpp-python sdist")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    llama_dir = Path(args.sdist) / "vendor" / "llama.cpp"
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "gemma3-270m-hf"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if not (ckpt / "model.safetensors").is_file():
        run_child(py("from edge_runtime.conversion import unpack_gguf;"
                     "from edge_runtime.default_model import default_model_path;"
                     f"unpack_gguf(default_model_path(), {str(ckpt)!r})"), env)

    results: dict[str, dict] = {}
    ours_f16, theirs_f16 = work / "ours-f16.gguf", work / "llamacpp-f16.gguf"
    results["ours: checkpoint -> f16"] = run_child(py(
        "from edge_runtime.conversion import convert_checkpoint;"
        f"convert_checkpoint({str(ckpt)!r}, {str(ours_f16)!r}, 'f16', progress=False)"), env)
    theirs_env = dict(os.environ, PYTHONPATH=str(llama_dir / "gguf-py"))
    results["llama.cpp: checkpoint -> f16"] = run_child(
        [sys.executable, str(llama_dir / "convert_hf_to_gguf.py"), str(ckpt), "--outfile", str(theirs_f16), "--outtype", "f16"],
        theirs_env)
    for who, src in (("ours", ours_f16), ("llama.cpp", theirs_f16)):
        dst = work / f"{who.replace('.', '')}-q4_k_m.gguf"
        results[f"{who}: f16 -> Q4_K_M"] = run_child(py(
            "from edge_runtime.backend.quantize import quantize_model;"
            f"quantize_model({str(src)!r}, {str(dst)!r}, 15, n_threads={args.threads})"), env)
        results[f"{who}: f16 -> Q4_K_M"]["size_mib"] = round(dst.stat().st_size / 2**20, 1)
    results["ours: checkpoint -> Q4_K_M (one call)"] = run_child(py(
        "from edge_runtime.conversion import convert_checkpoint;"
        f"convert_checkpoint({str(ckpt)!r}, {str(work / 'ours-direct-q4.gguf')!r}, 'Q4_K_M', progress=False, n_threads={args.threads})"), env)

    o, t = results["ours: checkpoint -> f16"], results["llama.cpp: checkpoint -> f16"]
    ratios = {
        "f16 wall (llama.cpp / ours)": round(t["wall_s"] / o["wall_s"], 2),
        "f16 peak RSS (llama.cpp / ours)": round(t["peak_rss_mib"] / o["peak_rss_mib"], 2),
    }
    ow = o["wall_s"] + results["ours: f16 -> Q4_K_M"]["wall_s"]
    tw = t["wall_s"] + results["llama.cpp: f16 -> Q4_K_M"]["wall_s"]
    ratios["checkpoint -> Q4_K_M wall (llama.cpp / ours)"] = round(tw / ow, 2)
    report = {"checkpoint": str(ckpt), "checkpoint_mib": round((ckpt / "model.safetensors").stat().st_size / 2**20, 1),
              "cpu_count": os.cpu_count(), "steps": results, "ratios": ratios}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"checkpoint: {ckpt} ({report['checkpoint_mib']} MiB f32 safetensors), {os.cpu_count()} CPUs")
        for name, r in results.items():
            extra = f", {r['size_mib']} MiB" if "size_mib" in r else ""
            print(f"  {name:<40} {r['wall_s']:>7.2f} s  {r['peak_rss_mib']:>8.1f} MiB peak RSS{extra}")
        for name, v in ratios.items():
            print(f"  {name:<48} {v:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
