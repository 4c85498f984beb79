"""`edge-runtime package | verify`: thin commands over package/."""

from __future__ import annotations

import argparse
import json
import sys


def _size(text: str) -> int:
    from edge_runtime.hub.catalog import parse_size_mb

    return parse_size_mb(text) * 2**20


def cmd_package(args: argparse.Namespace) -> int:
    from edge_runtime.hub.catalog import find_entry, load_catalog, parse_size_mb
    from edge_runtime.hub.store import find, resolve_model_arg
    from edge_runtime.package.bundle import TARGETS, BundleSettings, budget_mb, package

    ram = parse_size_mb(args.ram) if args.ram else None
    entry = find_entry(load_catalog(), args.model.split(":")[0])
    if entry is not None and find(args.model) is None and ":" not in args.model:
        # a catalog model not pulled yet: the best quant that fits the target's RAM class, fetched now
        from edge_runtime.hub.fetch import fetch

        budget = budget_mb(args.target, ram or TARGETS[args.target][2])
        pulled = fetch(entry.id, ram_mb=budget, n_ctx=args.ctx or 2048, progress=not args.json)
        path, projectors = pulled.model, pulled.projectors
    else:
        path, projectors = resolve_model_arg(args.model)
    settings = BundleSettings(target=args.target, ram_mb=ram,
                              max_shard=_size(args.max_shard) if args.max_shard else None, n_ctx=args.ctx,
                              zip=args.zip, progress=not args.json and sys.stderr.isatty())
    manifest = package(path, args.output, settings, projectors=list(args.mmproj or projectors))
    if args.json:
        print(json.dumps(manifest, indent=1))
    else:
        rec = manifest["recommended"]
        print(f"{args.output}: {len(manifest['files'])} files for {args.target} "
              f"({sum(f['size'] for f in manifest['files']) / 2**20:.0f} MiB); load {manifest['first_shard']}; "
              f"n_ctx {rec['n_ctx']}, needs about {rec['min_ram_mb']} MB" + (f"; archive {args.output}.zip" if args.zip
                                                                             else ""))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from edge_runtime.package.verify import verify

    report = verify(args.bundle, load=not args.no_load)
    if args.json:
        print(json.dumps(report.__dict__ | {"ok": report.ok}))
    else:
        for p in report.problems:
            print(f"FAIL {p}")
        if report.ok:
            print(f"ok: {report.checked_files} files match the manifest"
                  + ("; the model loads and steps" if report.greedy_token is not None else ""))
    return 0 if report.ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("package", help="an app-ready bundle (android, ios, pi): shards, manifest, archive")
    p.add_argument("model", help="a GGUF path or a pulled model's name")
    p.add_argument("--target", required=True, choices=["android", "ios", "pi"])
    p.add_argument("-o", "--output", required=True, help="the bundle folder to write")
    p.add_argument("--ram", help="the device class, e.g. 6G (default: 6G phones, 4G Pi)")
    p.add_argument("--max-shard", help="largest file, e.g. 512M (default: the store's limit)")
    p.add_argument("-c", "--ctx", type=int, help="context to plan for (default: the largest that fits)")
    p.add_argument("--mmproj", action="append", help="projector / audio encoder to include (default: the pulled ones)")
    p.add_argument("--zip", action="store_true", help="also write OUTPUT.zip, entries stored and page-aligned")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_package)

    p = subparsers.add_parser("verify", help="check a bundle: hashes, shards, archive alignment, a greedy step")
    p.add_argument("bundle", help="a bundle folder or its .zip")
    p.add_argument("--no-load", action="store_true", help="check files only, do not load the model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)
