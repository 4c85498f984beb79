"""Our own code on an ARM build of llama.cpp, run by tools/arm_check.sh under qemu-aarch64.

    run_checks.py reference            on this (x86) machine: the expected tokens, reply and VAD output (JSON)
    run_checks.py check BUILD CPU REF  under emulation: the same checks, compared with REF; exit 1 on a mismatch

A build the CPU cannot run (the Pi 5 build on a Cortex-A72) must be refused by the runtime's CPU check
before llama.cpp computes anything (no SIGILL).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# A prompt whose greedy continuation has no near ties (the top two logits at least 0.56 apart at every
# step on x86): a correct build on any CPU must give the same tokens. (Different SIMD kernels round
# differently, by about 0.2 logits here; x86's own batch and one-token paths disagree where the margin is 0.16.)
PROMPT = "January, February, March, April,"
N_TOKENS = 16
# x86's own repacked and plain kernels differ by 0.40 on these top-5 logits; the Pi 4 build on a Cortex-A72 by 0.57.
LOGIT_TOLERANCE = 1.0
CHAT = "Say hello."
CLIP = Path.home() / ".cache" / "edge-runtime" / "arm" / "clip16k.npy"

# The CPU features each emulated core has (qemu's cortex-a72 / cortex-a76 models).
EXPECTED_FEATURES = {"cortex-a72": ({"NEON"}, {"DOTPROD", "FP16"}), "cortex-a76": ({"NEON", "DOTPROD", "FP16"}, set())}


def _speech() -> np.ndarray:
    """Half a second of silence, a spoken sentence (espeak-ng, made on x86 once), a second of silence."""
    if not CLIP.exists():
        sys.path.insert(0, str(ROOT / "tests"))
        import tempfile

        from audio_speech import speak

        with tempfile.TemporaryDirectory() as d:
            speech = speak("Hello, my name is John and I live in London.", Path(d))
        CLIP.parent.mkdir(parents=True, exist_ok=True)
        np.save(CLIP, np.concatenate([np.zeros(8000), speech, np.zeros(16000)]).astype(np.float32))
    return np.load(CLIP)


def run(reference_tokens: list[int] | None = None) -> dict:
    from edge_runtime import load_model
    from edge_runtime.audio.vad import SileroVAD
    from edge_runtime.chat import ChatSession
    from edge_runtime.generate import GenerationSettings

    out: dict = {}
    t = time.perf_counter()
    with load_model(n_ctx=256, n_threads=2) as model:
        out["load_s"] = round(time.perf_counter() - t, 2)
        result = model.generate(PROMPT, temperature=0, max_tokens=N_TOKENS)
        out["tokens"], out["text"] = result.tokens, result.text
        out["gen_tps"] = round(result.metrics.gen_tps, 2)
        # teacher-forced logits over the prompt and x86's continuation: the 5 best ids and their values
        sequence = model.tokenize(PROMPT) + (reference_tokens or result.tokens)
        logits = model.logits(sequence)
        top = np.argsort(-logits, axis=1)[:, :5]
        out["sequence"] = sequence
        out["top5"] = [[[int(i), float(row[i])] for i in ids] for row, ids in zip(logits, top)]
        chat = ChatSession(model, settings=GenerationSettings(temperature=0, max_tokens=8))
        out["chat"] = chat.ask(CHAT).text
    with SileroVAD() as vad:
        probs = vad.probabilities(_speech())
    out["vad"] = [round(float(p), 4) for p in probs]
    return out


def _info() -> dict:
    """`edge-runtime info --json`, as a user on the board would run it."""
    import contextlib
    import io

    from edge_runtime.cli import main as cli

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli(["info", "--json", "-c", "256"]) == 0
    return json.loads(buf.getvalue())


def check(build: str, cpu_name: str, ref_path: str) -> int:
    from edge_runtime.errors import UnsupportedBuildError
    from edge_runtime.hardware import detect_cpu

    ref = json.loads(Path(ref_path).read_text())
    cpu = detect_cpu()
    have, lacks = EXPECTED_FEATURES[cpu_name]
    problems = []
    if not have <= set(cpu.features) or lacks & set(cpu.features):
        problems.append(f"CPU features {cpu.features}: expected {sorted(have)} and none of {sorted(lacks)}")
    try:
        got = run(ref["tokens"])
    except UnsupportedBuildError as exc:
        if build == "pi5" and cpu_name == "cortex-a72" and "armv8-a" in str(exc) and "DOTPROD" in str(exc):
            print(f"[{build} on {cpu_name}] refused as it should be: {exc}")
            return 1 if problems else 0
        problems.append(f"unexpected refusal: {exc}")
        got = {}
    else:
        if build == "pi5" and cpu_name == "cortex-a72":
            problems.append("the Pi 5 build ran on a Cortex-A72: the CPU check did not refuse it")
        if got["tokens"] != ref["tokens"]:
            problems.append(f"greedy tokens {got['tokens']} != x86 {ref['tokens']}")
        diff = 0.0
        for p, row in enumerate(ref["top5"]):
            mine = dict(got["top5"][p])
            for i, v in row:
                if i in mine:
                    diff = max(diff, abs(mine[i] - v))
            if row[0][1] - row[1][1] > 2 * LOGIT_TOLERANCE and row[0][0] != got["top5"][p][0][0]:
                problems.append(f"position {p}: best token {got['top5'][p][0][0]} != x86 {row[0][0]}")
        got["max_logit_diff"] = round(diff, 4)
        if diff > LOGIT_TOLERANCE:
            problems.append(f"logits differ from x86 by {diff:.3f} (> {LOGIT_TOLERANCE})")
        if got["chat"] != ref["chat"]:
            problems.append(f"chat reply {got['chat']!r} != x86 {ref['chat']!r}")
        vad, want = np.array(got["vad"]), np.array(ref["vad"])
        if vad.shape != want.shape or np.abs(vad - want).max() > 1e-3:
            problems.append(f"VAD probabilities differ from x86 by {np.abs(vad - want).max() if vad.shape == want.shape else 'shape'}")
        if not any(p > 0.5 for p in got["vad"]):
            problems.append("VAD found no speech")
        info = _info()
        if info["llama_cpp_build"]["march"] != {"pi4": "armv8-a", "pi5": "armv8.2-a+dotprod+fp16"}[build]:
            problems.append(f"info: build {info['llama_cpp_build']}")
        if set(info["cpu"]["features"]) != set(cpu.features) or info["cpu"]["machine"] != "aarch64":
            problems.append(f"info: cpu {info['cpu']}")
        got["build_features"] = info["llama_cpp_build"]["features"]
    report = {k: v for k, v in got.items() if k not in ("vad", "top5", "sequence")}
    print(f"[{build} on {cpu_name}] {json.dumps(report)}; features {', '.join(cpu.features)}")
    for p in problems:
        print(f"[{build} on {cpu_name}] FAIL: {p}")
    return 1 if problems else 0


def main() -> int:
    if sys.argv[1] == "reference":
        print(json.dumps(run()))
        return 0
    return check(*sys.argv[2:5])


if __name__ == "__main__":
    sys.exit(main())
