"""Gemma 3n audio encoder benchmark at the real E2B size (random weights, the real config): ours in onnxruntime
(f32, f16 and int8, written by `convert-mmproj -o audio.onnx`) against transformers' encoder in torch, on the same
10 s clip, same run. Each engine runs in its own child process so its peak RSS is its own.

Reports ms per second of audio and peak RSS, and the ratios ours / torch (target: f32 at most 0.5x in both).
It also reports the f32 arithmetic floor: the encoder's MatMul FLOPs (counted from onnxruntime's
profile of one run) at the best rate onnxruntime's f32 MatMul reaches here on the encoder's
largest shape, i.e. the time f32 cannot beat on this CPU however little else the graph does.

    python tools/bench_gemma3n_audio.py [--seconds 10] [--threads 2] [--repeat 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXT_HIDDEN = 2048  # Gemma 3n E2B's text width


def build_checkpoint(path: Path) -> None:
    """config.json and bf16 safetensors of the audio tower and embedder (the parts the encoder needs)."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers.models.gemma3n import modeling_gemma3n as m

    audio = transformers.Gemma3nAudioConfig()
    text = transformers.Gemma3nTextConfig(hidden_size=TEXT_HIDDEN)
    torch.manual_seed(0)
    tower = m.Gemma3nAudioEncoder(audio).eval()
    embedder = m.Gemma3nMultimodalEmbedder(audio, text).eval()
    with torch.no_grad():  # non-trivial norm weights and scales, as a trained model has
        for module in (tower, embedder):
            for name, p in module.named_parameters():
                if p.dim() <= 1:
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape))
    tensors = {f"model.audio_tower.{k}": v for k, v in tower.state_dict().items()}
    tensors.update({f"model.embed_audio.{k}": v for k, v in embedder.state_dict().items()})
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    config = {"model_type": "gemma3n", "audio_config": audio.to_dict(), "text_config": {"hidden_size": TEXT_HIDDEN},
              "audio_soft_tokens_per_image": 188}
    (path / "config.json").write_text(json.dumps(config))


def clip(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)


def features(seconds: float):
    """The clip's log-mel features and mask (`Gemma3nFeatureExtractor.clip`)."""
    from edge_runtime.audio.gemma3n_features import Gemma3nFeatureExtractor

    return Gemma3nFeatureExtractor().clip(clip(seconds))


def encoder_feed(feats) -> dict:
    return {"input_features": feats.mel[None], "input_features_mask": feats.mask[None]}


def ort_session(model: str | bytes, threads: int, profile_prefix: str | None = None):
    """An onnxruntime CPU session with `threads` intra-op threads (profiling when a prefix is given)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def best_time(run, repeat: int) -> float:
    """The fastest of `repeat` calls of `run`, in seconds (warm up first)."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def child(engine: str, ckpt: Path, model: Path, seconds: float, threads: int, repeat: int) -> dict:
    feats = features(seconds)
    t_load = time.perf_counter()
    if engine == "torch":
        import torch
        import transformers
        from safetensors.torch import load_file
        from transformers.models.gemma3n import modeling_gemma3n as m

        torch.set_num_threads(threads)
        config = json.loads((ckpt / "config.json").read_text())
        audio = transformers.Gemma3nAudioConfig(**config["audio_config"])
        text = transformers.Gemma3nTextConfig(hidden_size=TEXT_HIDDEN)
        tower, embedder = m.Gemma3nAudioEncoder(audio).eval(), m.Gemma3nMultimodalEmbedder(audio, text).eval()
        weights = load_file(str(ckpt / "model.safetensors"))
        for module, prefix in ((tower, "model.audio_tower."), (embedder, "model.embed_audio.")):
            module.load_state_dict({k[len(prefix):]: v.float() for k, v in weights.items() if k.startswith(prefix)})
        del weights
        mel, mask = torch.tensor(feats.mel[None]), torch.tensor(~feats.mask[None])

        def run():
            with torch.no_grad():
                return embedder(inputs_embeds=tower(mel, mask).last_hidden_state).numpy()
    else:
        session = ort_session(str(model), threads)

        def run():
            return session.run(None, encoder_feed(feats))[0]
    load_s = time.perf_counter() - t_load
    np.save(f"/tmp/bench_g3n_{engine}.npy", run())  # also the warm-up
    return {"engine": engine, "ms_per_audio_s": 1000 * best_time(run, repeat) / seconds, "load_s": load_s,
            "peak_rss_mb": peak_rss_mb()}


def floor_child(model: Path, seconds: float, threads: int) -> dict:
    """MatMul FLOPs of one encoder run (shapes from onnxruntime's profile) and the best f32 MatMul rate."""
    session = ort_session(str(model), threads, str(Path(tempfile.gettempdir()) / "bench_g3n_profile"))
    session.run(None, encoder_feed(features(seconds)))
    profile = Path(session.end_profiling())
    flops, widest = 0, (0, 0, 0)
    for event in json.loads(profile.read_text()):
        args = event.get("args", {})
        if event.get("cat") != "Node" or args.get("op_name") != "MatMul" or "output_type_shape" not in args:
            continue
        # the profile lists the inputs that are not weights: a Linear shows only its activation
        a, out = (next(iter(d.values())) for d in (args["input_type_shape"][0], args["output_type_shape"][0]))
        flops += 2 * math.prod(out) * a[-1]
        if len(args["input_type_shape"]) == 1 and a[-1] * out[-1] > widest[1] * widest[2]:
            widest = (math.prod(a[:-1]), a[-1], out[-1])
    profile.unlink(missing_ok=True)
    del session
    return {"matmul_gflop": flops / 1e9, "shape": widest, "peak_gflops": matmul_peak(*widest, threads)}


def matmul_peak(m: int, k: int, n: int, threads: int, repeat: int = 10) -> float:
    """GFLOP/s of onnxruntime's f32 MatMul on one [m, k] x [k, n] product (best of `repeat`)."""
    from onnx import TensorProto, helper, numpy_helper

    from edge_runtime.conversion.onnx_graph import OPSET

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((0.02 * rng.standard_normal((k, n))).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [weight])
    session = ort_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
                          .SerializeToString(), threads)
    feed = {"x": rng.standard_normal((m, k)).astype(np.float32)}
    session.run(None, feed)  # warm-up
    return 2 * m * k * n / best_time(lambda: session.run(None, feed), repeat) / 1e9


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: ru_maxrss would carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", help="folder for the checkpoint and encoders (default: a temporary one)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "floor":
        print(json.dumps(floor_child(Path(args.model), args.seconds, args.threads)))
        return 0
    if args.child:
        print(json.dumps(child(args.child, Path(args.ckpt), Path(args.model or "."), args.seconds, args.threads,
                               args.repeat)))
        return 0

    from edge_runtime.conversion.gemma3n_audio import convert_audio_encoder

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        ckpt = work / "gemma3n-e2b-audio-random"
        if not (ckpt / "model.safetensors").exists():
            print("building the E2B-size random checkpoint ...", file=sys.stderr)
            build_checkpoint(ckpt)
        models = {}
        for outtype in ("f32", "f16", "int8"):
            path = work / outtype / "audio.onnx"
            t0 = time.perf_counter()
            if not path.exists():
                convert_audio_encoder(ckpt, path, outtype, progress=False)
            size = sum(p.stat().st_size for p in path.parent.iterdir())
            print(f"convert {outtype}: {time.perf_counter() - t0:.1f} s, {size / 2**20:.0f} MiB", file=sys.stderr)
            models[f"onnx-{outtype}"] = path
        rows = {}
        for engine in ("torch", "onnx-f32", "onnx-f16", "onnx-int8"):
            cmd = [sys.executable, __file__, "--child", engine, "--ckpt", str(ckpt), "--model",
                   str(models.get(engine, "")), "--seconds", str(args.seconds), "--threads", str(args.threads),
                   "--repeat", str(args.repeat)]
            rows[engine] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        ref = np.load("/tmp/bench_g3n_torch.npy")
        torch_row = rows["torch"]
        print(f"Gemma 3n E2B audio encoder, {args.seconds:g} s clip, {args.threads} threads")
        print(f"{'engine':<10} {'ms/audio s':>10} {'peak RSS MB':>12} {'time x':>7} {'mem x':>6} {'rel err':>8}")
        for engine, row in rows.items():
            out = np.load(f"/tmp/bench_g3n_{engine}.npy")
            err = float(np.abs(out.reshape(ref.shape) - ref).max() / np.abs(ref).max())
            print(f"{engine:<10} {row['ms_per_audio_s']:>10.1f} {row['peak_rss_mb']:>12.0f} "
                  f"{row['ms_per_audio_s'] / torch_row['ms_per_audio_s']:>7.2f} "
                  f"{row['peak_rss_mb'] / torch_row['peak_rss_mb']:>6.2f} {err:>8.1e}")
        cmd = [sys.executable, __file__, "--child", "floor", "--model", str(models["onnx-f32"]),
               "--seconds", str(args.seconds), "--threads", str(args.threads)]
        floor = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        floor_ms = 1000 * floor["matmul_gflop"] / floor["peak_gflops"] / args.seconds
        print(f"f32 floor: {floor['matmul_gflop']:.0f} GFLOP of MatMul per clip at onnxruntime's best f32 MatMul "
              f"here ({floor['peak_gflops']:.0f} GFLOP/s on {'x'.join(map(str, floor['shape']))}) = "
              f"{floor_ms:.0f} ms per audio s with nothing else = {floor_ms / torch_row['ms_per_audio_s']:.2f}x torch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
