"""LoRA adapters on the real Gemma 3 270M: conversion and decode speed, same run.

1. The default model unpacked to an f32 checkpoint (our `unpack`), a random PEFT adapter on it
   (r 16, the seven projections, non-zero B), made with transformers + peft.
2. Conversion: ours (`convert-lora`) against llama.cpp's `convert_lora_to_gguf.py` from the pinned
   sdist, each in its own process: seconds and peak RSS.
3. Decode tokens/s (greedy, 128 tokens, medians of rounds interleaved): the Q4_K_M model alone, with
   the adapter applied at run time, and the adapter merged (`convert --lora`, Q4_K_M).

    python tools/bench_lora.py [--rounds 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SDIST = ROOT / ".cache" / "llama-cpp-python-0.3.36" / "vendor" / "llama.cpp"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def timed(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a child process (Linux reports the largest child's maximum RSS)."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "r = subprocess.run(sys.argv[1:]); s = time.perf_counter() - t; "
            "print(s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); sys.exit(r.returncode)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    seconds, rss = out.stdout.split()[-2:]
    return float(seconds), float(rss)


def prepare(work: Path) -> tuple[Path, Path]:
    from edge_runtime.conversion import unpack_gguf
    from edge_runtime.default_model import default_model_path

    ckpt, adapter = work / "gemma3-270m-f32", work / "adapter"
    if not (ckpt / "config.json").exists():
        print("unpacking the default model ...", file=sys.stderr)
        unpack_gguf(default_model_path(), ckpt)
    if not (adapter / "adapter_model.safetensors").exists():
        import peft
        import torch
        import transformers

        torch.manual_seed(0)
        base = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
        model = peft.get_peft_model(base, peft.LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.01)
        model.save_pretrained(adapter)
    return ckpt, adapter


def decode_rate(model_path: Path, lora: Path | None, tokens: int) -> float:
    from edge_runtime import GenerationSettings, load_model

    extra = {"lora": ((str(lora), 1.0),)} if lora else {}
    with load_model(model_path, n_ctx=512, n_threads=2, **extra) as model:
        model.generate("Warm up", max_tokens=4)
        model.reset()
        result = model.generate("Once upon a time", GenerationSettings(temperature=0, max_tokens=tokens))
        return result.metrics.gen_tps


def main() -> int:
    from edge_runtime.default_model import default_model_path

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "edge-runtime" / "bench-lora")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt, adapter = prepare(args.work)

    ours_out, theirs_out = args.work / "ours.gguf", args.work / "theirs.gguf"
    ours = timed([sys.executable, "-m", "edge_runtime", "convert-lora", str(adapter), "--base", str(ckpt), "-o",
                  str(ours_out), "--outtype", "f32", "--no-progress"])
    theirs = timed([sys.executable, str(SDIST / "convert_lora_to_gguf.py"), "--base", str(ckpt), "--outfile",
                    str(theirs_out), "--outtype", "f32", str(adapter)])
    print(f"convert: ours {ours[0]:.2f} s, {ours[1]:.0f} MB peak; llama.cpp {theirs[0]:.2f} s, {theirs[1]:.0f} MB peak "
          f"(time {ours[0] / theirs[0]:.2f}x, memory {ours[1] / theirs[1]:.2f}x)")

    merged = args.work / "merged-q4_k_m.gguf"
    if not merged.exists():
        subprocess.run([sys.executable, "-m", "edge_runtime", "convert", str(ckpt), "-o", str(merged), "--outtype",
                        "Q4_K_M", "--lora", str(adapter), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    model = default_model_path()
    rates: dict[str, list[float]] = {"base": [], "adapter at run time": [], "merged": []}
    for _ in range(args.rounds):
        rates["base"].append(decode_rate(model, None, args.tokens))
        rates["adapter at run time"].append(decode_rate(model, ours_out, args.tokens))
        rates["merged"].append(decode_rate(merged, None, args.tokens))
    base = statistics.median(rates["base"])
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"decode {name:20} {rate:6.1f} tok/s  ({rate / base:.2f}x the base)")
    print(json.dumps({"convert": {"ours": ours, "llama.cpp": theirs},
                      "decode": {k: statistics.median(v) for k, v in rates.items()}}))
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
