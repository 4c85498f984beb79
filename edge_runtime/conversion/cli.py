"""`edge-runtime convert`, `edge-runtime unpack` and `edge-runtime convert-mmproj`.

Optional dependencies (safetensors, tqdm, huggingface_hub, ...) are imported
only inside the command functions, so registering the commands is free.
"""

from __future__ import annotations

import argparse
import json
import sys

from edge_runtime.conversion.mmproj_cli import register_mmproj

PRESET_HELP = "max-efficiency (Q4_K_M), balanced (Q8_0) or quality (bf16)"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a Hugging Face Gemma checkpoint to GGUF",
        description="Convert a Hugging Face Gemma checkpoint (folder or repo id) to a GGUF file, "
        "optionally quantized. Presets: max-efficiency = Q4_K_M, balanced = Q8_0, quality = bf16.",
    )
    p.add_argument("src", help="checkpoint folder, or a Hugging Face repo id (owner/name)")
    p.add_argument("-o", "--output", required=True, help="output .gguf path")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--outtype", default=None,
                       help="f32, f16 (default), bf16, q8_0, or a llama.cpp type such as Q4_K_M, Q4_0, Q4_K_S, Q5_K_M, Q6_K, Q8_0, IQ4_NL")
    group.add_argument("--preset", default=None, choices=["max-efficiency", "balanced", "quality"], help=PRESET_HELP)
    p.add_argument("--lora", action="append", default=[], metavar="ADAPTER_DIR[:SCALE]",
                   help="merge a PEFT LoRA adapter into the weights before writing (repeatable; SCALE default 1)")
    p.add_argument("--imatrix", default=None, help="importance matrix file for llama.cpp quantization types")
    p.add_argument("--verify", action="store_true", help="check the tokenizer against the Hugging Face one and report perplexity")
    p.add_argument("--threads", type=int, default=2, help="threads for quantization and verification (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_convert)

    u = subparsers.add_parser("unpack", help="turn a GGUF back into a Hugging Face checkpoint folder (f32)")
    u.add_argument("model", help="GGUF file")
    u.add_argument("out_dir", help="output folder")
    u.add_argument("--no-progress", action="store_true", help="no progress bar")
    u.add_argument("--json", action="store_true", help="print the result as JSON")
    u.set_defaults(func=cmd_unpack)

    register_mmproj(subparsers)

    lo = subparsers.add_parser("convert-lora", help="convert a PEFT LoRA adapter to a GGUF adapter (no torch)",
                               description="Convert a PEFT LoRA adapter folder (adapter_config.json + "
                               "adapter_model.safetensors) to a GGUF adapter for --lora, checked against its base.")
    lo.add_argument("adapter", help="the PEFT adapter folder")
    lo.add_argument("--base", required=True, help="the base model: its checkpoint folder or its GGUF")
    lo.add_argument("-o", "--output", required=True, help="output .gguf path")
    lo.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16", "q8_0"])
    lo.add_argument("--no-progress", action="store_true", help="no progress bar")
    lo.add_argument("--json", action="store_true", help="print the result as JSON")
    lo.set_defaults(func=cmd_convert_lora)


def _preset_table(counts: tuple[int, int, int] | None) -> str:
    from edge_runtime.conversion.quantize import describe_presets

    lines = []
    for row in describe_presets(*(counts or (None, 0, 256))):
        size = f", ~{row['size_bytes'] / 2**20:.0f} MiB file, ~{row['ram_bytes'] / 2**20:.0f} MiB RAM" if "size_bytes" in row else ""
        lines.append(f"  {row['preset']:<15} {row['outtype']:<7} {row['summary']}{size}")
    return "\n".join(lines)


def cmd_convert(args: argparse.Namespace) -> int:
    from edge_runtime.conversion.convert import PlanSummary, convert_checkpoint
    from edge_runtime.conversion.verify import describe
    from edge_runtime.lora.adapters import parse_lora_arg

    def show_presets(plan: PlanSummary) -> None:  # before the work, from the planned tensors
        if args.preset and not args.json:
            table = _preset_table((plan.n_params, plan.n_embd_params, plan.embd_width))
            print("presets (expected file size and RAM for this model):\n" + table, flush=True)

    outtype = args.outtype if args.outtype is not None else (None if args.preset else "f16")
    result = convert_checkpoint(
        args.src, args.output, outtype, preset=args.preset, imatrix=args.imatrix, verify=args.verify,
        progress=not args.no_progress and sys.stderr.isatty(), n_threads=args.threads, on_plan=show_presets,
        lora=[parse_lora_arg(x) for x in args.lora],
    )
    m = result.manifest
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True, default=str))
        return 0 if not result.verification or result.verification.get("ok") else 1
    print(f"wrote {result.path} ({m['size_bytes'] / 2**20:.1f} MiB, {m['quantization']}, {m['architecture']}) in {result.seconds:.1f} s")
    print(f"sha256 {m['sha256']}; manifest {result.manifest_path}")
    if result.verification:
        print("\n".join(describe(result.verification)))
        return 0 if result.verification.get("ok") else 1
    return 0


def cmd_convert_lora(args: argparse.Namespace) -> int:
    from edge_runtime.lora.convert import convert_lora

    result = convert_lora(args.adapter, args.base, args.output, args.outtype, progress=not args.no_progress)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(f"wrote {result.path}: {result.tensors} adapted projections, rank {result.rank}, alpha {result.alpha:g}"
              f"{' (rsLoRA scale folded in)' if result.rslora else ''}; use it with --lora {result.path}[:SCALE]")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from edge_runtime.conversion.unpack import unpack_gguf

    out = unpack_gguf(args.model, args.out_dir, progress=not args.no_progress and sys.stderr.isatty())
    files = sorted(p.name for p in out.iterdir())
    if args.json:
        print(json.dumps({"out_dir": str(out), "files": files}))
    else:
        print(f"wrote {out}: {', '.join(files)}")
    return 0
