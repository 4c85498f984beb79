"""`edge-runtime convert-mmproj`: a multimodal projector GGUF (Gemma 4 audio, Gemma 3 vision) or Gemma 3n's
audio encoder (ONNX) from a checkpoint.

Registered by `conversion.cli.register`.
"""

from __future__ import annotations

import argparse
import json
import sys


def register_mmproj(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-mmproj",
        help="write a media encoder: the mmproj GGUF (Gemma 4 E2B/E4B audio, Gemma 3 vision) or, with -o X.onnx, "
        "Gemma 3n's audio encoder",
        description="Write the projector GGUF that llama.cpp's mtmd loads next to the text model: the audio "
        "encoder of a Gemma 4 E2B/E4B checkpoint (clip.audio.projector_type gemma4a, for the gemma speech engine: "
        "--model TEXT.gguf --mmproj MMPROJ.gguf) or the SigLIP vision tower of a Gemma 3 4B/12B/27B checkpoint "
        "(clip.projector_type gemma3). With an output ending in .onnx, Gemma 3n E2B/E4B's audio encoder and "
        "embedder as an ONNX model (llama.cpp's mtmd does not run it; the runtime does, in onnxruntime: "
        "--model gemma-3n.gguf --mmproj audio.onnx).",
    )
    p.add_argument("src", help="checkpoint folder, or a Hugging Face repo id (owner/name)")
    p.add_argument("-o", "--output", required=True, help="output .gguf path (or .onnx: Gemma 3n's audio encoder)")
    p.add_argument("--outtype", choices=["f32", "f16", "bf16", "q8_0", "int8"],
                   help="type of the weight matrices: f32, f16 (default), bf16, q8_0 for GGUF (norms, scalars, "
                        "convolutions and embeddings stay f32); f32 (default), f16, int8 for ONNX")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_convert_mmproj)


def cmd_convert_mmproj(args: argparse.Namespace) -> int:
    from edge_runtime.conversion.checkpoint import resolve_source
    from edge_runtime.conversion.mmproj import convert_mmproj

    from edge_runtime.errors import ConversionError

    progress = not args.no_progress and sys.stderr.isatty()
    onnx_out = args.output.lower().endswith(".onnx")
    outtype = args.outtype or ("f32" if onnx_out else "f16")
    if onnx_out:
        from edge_runtime.conversion.gemma3n_audio import OUTTYPES, convert_audio_encoder

        if outtype not in OUTTYPES:
            raise ConversionError(f"--outtype {outtype} is for GGUF projectors; an ONNX encoder takes "
                                  f"{', '.join(OUTTYPES)}")
        out = convert_audio_encoder(resolve_source(args.src), args.output, outtype, progress=progress)
    else:
        if outtype == "int8":
            raise ConversionError("--outtype int8 is for ONNX encoders (-o audio.onnx); GGUF projectors take "
                                  "f32, f16, bf16 or q8_0")
        out = convert_mmproj(resolve_source(args.src), args.output, outtype, progress=progress)
    files = [out, *sorted(out.parent.glob(f"{out.name}.*.data"))]
    size = sum(f.stat().st_size for f in files)
    if args.json:
        print(json.dumps({"path": str(out), "files": [str(f) for f in files], "size_bytes": size, "outtype": outtype}))
    else:
        print(f"wrote {out} ({size / 2**20:.1f} MiB, {outtype})")
    return 0
