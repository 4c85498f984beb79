"""`edge-runtime convert-mmproj`: the Gemma 4 audio projector GGUF from a checkpoint.

Registered by `conversion.cli.register`.
"""

from __future__ import annotations

import argparse
import json
import sys


def register_mmproj(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-mmproj",
        help="write the Gemma 4 E2B/E4B audio projector (mmproj) GGUF from a Hugging Face checkpoint",
        description="Write the audio projector GGUF (clip.audio.projector_type gemma4a) of a Gemma 4 E2B/E4B "
        "checkpoint folder, for the gemma speech engine (--model TEXT.gguf --mmproj MMPROJ.gguf). "
        "Gemma 3n audio does not run in this llama.cpp.",
    )
    p.add_argument("src", help="checkpoint folder, or a Hugging Face repo id (owner/name)")
    p.add_argument("-o", "--output", required=True, help="output .gguf path")
    p.add_argument("--outtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"],
                   help="type of the weight matrices (default f16); norms, scalars and convolutions stay f32")
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
