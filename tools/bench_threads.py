"""Generation speed when other processes compete for the CPU: fixed thread counts vs our adaptive default.

    python tools/bench_threads.py [--tokens 96] [--rounds 3]

Competitors, each a separate process running while we measure:
  none      nothing
  audio     real-time microphone-style load: Silero VAD on a 32 ms chunk every 32 ms (an assistant)
  busy      one process spinning on a core (another application)
  llama     a second generation with llama.cpp's default 2 threads, never adapting (another llama.cpp app)
Contenders (same model, same process, interleaved round by round): llama.cpp's usual fixed thread
count (all performance cores), one thread, and edge_runtime's default (adaptive). Prints median tok/s
and the adaptive default's ratio to the fixed all-cores setting and to the best fixed setting.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMPETITORS = {
    "none": None,
    "audio": (
        "import time, numpy as np\n"
        "from edge_runtime.audio.vad import SileroVAD\n"
        "v = SileroVAD(); x = (np.random.default_rng(0).standard_normal(512) * 0.05).astype(np.float32)\n"
        "t = time.monotonic()\n"
        "while True:\n"
        "    v(x); t += 0.032; time.sleep(max(0.0, t - time.monotonic()))\n"
    ),
    "busy": "while True: pass\n",
    "llama": (
        "from edge_runtime import load_model\n"
        "with load_model(None, n_ctx=512, adaptive_threads=False, flash_attn=False) as m:\n"
        "    while True: m.generate('The history of the Roman empire', temperature=0, max_tokens=64)\n"
    ),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--competitors", default=",".join(COMPETITORS))
    args = ap.parse_args()

    from edge_runtime import load_model
    from edge_runtime.hardware import detect_cpu

    cores = max(1, detect_cpu().performance_cores)
    modes = {f"fixed {cores}": dict(n_threads=cores, adaptive_threads=False),
             "fixed 1": dict(n_threads=1, adaptive_threads=False),
             "adaptive (default)": {}}
    models = {name: load_model(None, n_ctx=512, flash_attn=False, **kw) for name, kw in modes.items()}
    prompt = "Once upon a time"
    for m in models.values():
        m.generate(prompt, temperature=0, max_tokens=8)

    print(f"| competitor | {' | '.join(modes)} | adaptive / fixed {cores} | adaptive / best fixed |")
    print("| --- |" + " --- |" * (len(modes) + 2))
    try:
        for competitor in args.competitors.split(","):
            code = COMPETITORS[competitor]
            proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) if code else None
            try:
                time.sleep(3 if competitor == "llama" else 1)  # let it load and settle
                rates: dict[str, list[float]] = {name: [] for name in modes}
                for _ in range(args.rounds):
                    for name, m in models.items():
                        m.reset()
                        r = m.generate(prompt, temperature=0, max_tokens=args.tokens)
                        rates[name].append(r.metrics.gen_tps)
            finally:
                if proc:
                    proc.kill()
                    proc.wait()
            med = {name: statistics.median(v) for name, v in rates.items()}
            adaptive = med["adaptive (default)"]
            fixed_all = med[f"fixed {cores}"]
            best_fixed = max(med[f"fixed {cores}"], med["fixed 1"])
            cells = " | ".join(f"{med[n]:.1f}" for n in modes)
            print(f"| {competitor} | {cells} | {adaptive / fixed_all:.2f} | {adaptive / best_fixed:.2f} |", flush=True)
    finally:
        for m in models.values():
            m.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
