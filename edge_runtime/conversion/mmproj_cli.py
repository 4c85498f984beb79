"""`edge-runtime convert-mmproj`: a multimodal projector GGUF (Gemma 4 audio, Gemma 3 vision) from a checkpoint.

Registered by `conversion.cli.register`.
"""

from __future__ import annotations

import argparse
import json
import sys


def register_mmproj(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-mmproj",
        help="write the multimodal projector (mmproj) GGUF: Gemma 4 E2B/E4B audio or Gemma 3 vision",
        description="Write the projector GGUF that llama.cpp's mtmd loads next to the text model: the audio "
        "encoder of a Gemma 4 E2B/E4B checkpoint (clip.audio.projector_type gemma4a, for the gemma speech engine: "
        "--model TEXT.gguf --mmproj MMPROJ.gguf) or the SigLIP vision tower of a Gemma 3 4B/12B/27B checkpoint "
        "(clip.projector_type gemma3). Gemma 3n audio does not run in this llama.cpp.",
    )
    p.add_argument("src", help="checkpoint folder, or a Hugging Face repo id (owner/name)")
    p.add_argument("-o", "--output", required=True, help="output .gguf path")
    p.add_argument("--outtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"],
                   help="type of the weight matrices (default f16); norms, scalars, convolutions and embeddings stay f32")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_convert_mmproj)


def cmd_convert_mmproj(args: argparse.Namespace) -> int:
    from edge_runtime.conversion.checkpoint import resolve_source
    from edge_runtime.conversion.mmproj import convert_mmproj

    src = resolve_source(args.src)
    out = convert_mmproj(src, args.output, args.outtype, progress=not args.no_progress and sys.stderr.isatty())
    size = out.stat().st_size
    if args.json:
        print(json.dumps({"path": str(out), "size_bytes": size, "outtype": args.outtype}))
    else:
        print(f"wrote {out} ({size / 2**20:.1f} MiB, {args.outtype})")
    return 0
