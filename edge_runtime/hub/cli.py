"""`edge-runtime pull | list | rm | show | recommend`: thin commands over hub/."""

from __future__ import annotations

import argparse
import json
import sys

from edge_runtime.errors import ModelNotFoundError


def cmd_pull(args: argparse.Namespace) -> int:
    from edge_runtime.hub.fetch import fetch

    model = fetch(args.name, n_ctx=args.ctx, convert=args.convert, quant=args.quant,
                  progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(model.as_dict()))
    else:
        print(f"pulled {model.name}: {model.quant}, {model.size / 2**20:.0f} MiB -> {model.model}")
        for p in model.projectors:
            print(f"  projector {p}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from edge_runtime.hub import store

    models = store.load()
    rows = []
    for name, m in sorted(models.items()):
        rows.append({"name": name, "quant": m.quant, "size_mb": round(m.size / 2**20, 1), "path": m.model,
                     "modalities": ["text"] + (["media"] if m.projectors else []), "projectors": m.projectors})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no models pulled yet: edge-runtime pull NAME (edge-runtime recommend suggests one)")
        return 0
    print(f"{'NAME':45} {'QUANT':8} {'SIZE':>9}  PATH")
    for r in rows:
        print(f"{r['name']:45} {r['quant']:8} {r['size_mb']:7.0f}MB  {r['path']}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from edge_runtime.hub import store

    removed = store.remove(args.name)
    print(f"removed {removed.name} ({removed.size / 2**20:.0f} MiB)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from edge_runtime.gguf_file import read_header
    from edge_runtime.hub import store
    from edge_runtime.hub.catalog import find_entry, load_catalog
    from edge_runtime.model import ModelInfo
    from edge_runtime.settings import RuntimeSettings, resolve

    path, projectors = store.resolve_model_arg(args.name)
    if path is None:
        raise ModelNotFoundError(f"no model {args.name!r}")
    header = read_header(path)
    info = ModelInfo.from_header(header)
    settings = resolve(RuntimeSettings(), trained_ctx=header.context_length)
    entry = find_entry(load_catalog(), args.name.split(":")[0])
    report = {"name": args.name, "path": path, "projectors": projectors, "model": info.__dict__,
              "chat_template": header.chat_template, "recommended": {**settings.as_dict(), "reasons": settings.reasons},
              "catalog": entry.data if entry else None}
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return 0
    for k, v in info.__dict__.items():
        print(f"{k:18} {v}")
    print(f"{'projectors':18} {', '.join(projectors) or 'none'}")
    print("recommended settings (this machine)")
    for k, v in settings.as_dict().items():
        print(f"  {k:16} {v}")
    print("chat template")
    print(header.chat_template or "  (none: a base model, or Gemma's built-in format)")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from edge_runtime.hub.catalog import load_catalog, parse_size_mb, recommend

    from edge_runtime.hub.fetch import free_ram_mb

    ram = parse_size_mb(args.ram) if args.ram else free_ram_mb()
    choices = recommend(load_catalog(), ram, args.task, args.ctx)
    if args.json:
        print(json.dumps([{"id": c.entry.id, "quant": c.quant, "need_mb": c.need_mb, "why": c.why} for c in choices],
                         indent=1))
        return 0
    source = f"--ram {args.ram}" if args.ram else "memory available now"
    if not choices:
        print(f"nothing in the catalog fits {ram} MB ({source}) for {args.task} at {args.ctx} tokens; try a smaller "
              "--ctx")
        return 1
    best = choices[0]
    print(f"{best.entry.id} ({best.quant}): {best.why}; fits {ram} MB ({source}).")
    print(f"  edge-runtime pull {best.entry.id}:{best.quant}" if "gguf" in best.entry.data else
          f"  edge-runtime convert {best.entry.data['checkpoint']} -o {best.entry.id}.gguf --outtype {best.quant}")
    for c in choices[1:]:
        print(f"  also: {c.entry.id} ({c.quant}, about {c.need_mb} MB)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pull", help="download a model by catalog id or REPO_ID[:QUANT] (Hugging Face)")
    p.add_argument("name", help="e.g. gemma-3-1b-it, or ggml-org/gemma-3-1b-it-GGUF:Q4_K_M")
    p.add_argument("-c", "--ctx", type=int, default=4096, help="context to leave room for when picking a quant")
    p.add_argument("--convert", action="store_true",
                   help="fetch the catalog model's checkpoint and convert it here (for models without a GGUF)")
    p.add_argument("--quant", help="with --convert: the type to convert to (default: the catalog's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pull)

    p = subparsers.add_parser("list", help="models pulled to this machine")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("rm", help="remove a pulled model and its files")
    p.add_argument("name")
    p.set_defaults(func=cmd_rm)

    p = subparsers.add_parser("show", help="a model's metadata, chat template and recommended settings")
    p.add_argument("name", help="a pulled name or a GGUF path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = subparsers.add_parser("recommend", help="the catalog's best model for this machine (or --ram)")
    p.add_argument("--ram", help="memory to plan for, e.g. 4G (default: what is available now)")
    p.add_argument("--task", default="chat", help="chat, translate, asr or vision (default chat)")
    p.add_argument("-c", "--ctx", type=int, default=4096, help="context in tokens (default 4096)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recommend)
