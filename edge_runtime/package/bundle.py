"""`edge-runtime package`: a model as an app-ready bundle for Android, iOS or a Raspberry Pi image.

The bundle folder is staged and appears whole (or not at all). It holds the model split under the store's
per-file limit (llama.cpp loads it from the first shard), its projectors, and `manifest.json` (schema:
`manifest.schema.json` beside this module): every file with size and sha256, what the model is, and the
settings for the target's RAM class. Phone memory budget (what a popular llama.cpp app checks):
need = file x 0.92 + 0.43 GB + KV cache, against min(0.65 x RAM, RAM - 1.2 GB).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.conversion.writer import atomic_path, sha256_file, staged_folder
from edge_runtime.errors import InvalidArgumentError
from edge_runtime.gguf_file import read_header
from edge_runtime.hub.catalog import kv_cache_mb
from edge_runtime.package.archive import write_aligned_zip
from edge_runtime.package.shards import split_gguf

GB = 1 << 30
MB = 1 << 20
TARGETS = {
    # per-file limit, total limit, default RAM class
    "android": (int(1.5 * GB), 4 * GB, 6 * 1024),  # Play asset packs / AI packs: 1.5 GB each, 4 GB in all
    "ios": (512 * MB, 4 * GB, 6 * 1024),  # on-demand resources: 512 MB per pack before iOS 18; app < 4 GB
    "pi": (None, None, 4 * 1024),
}
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class BundleSettings:
    target: str
    ram_mb: int | None = None
    max_shard: int | None = None
    n_ctx: int | None = None
    zip: bool = False
    progress: bool = True


def budget_mb(target: str, ram_mb: int) -> int:
    """What an app may use: phones min(0.65 x RAM, RAM - 1.2 GB); a Pi 80% (its service's MemoryMax)."""
    if target == "pi":
        return int(ram_mb * 0.8)
    return int(min(0.65 * ram_mb, ram_mb - 1.2 * 1024))


def _kv_mb(header, n_ctx: int) -> float:
    meta = header.metadata
    arch = header.architecture
    n_layer = int(meta.get(f"{arch}.block_count", 0))
    heads_kv = meta.get(f"{arch}.attention.head_count_kv", 1)
    heads_kv = max(heads_kv) if isinstance(heads_kv, list) else int(heads_kv)
    return kv_cache_mb(n_layer, heads_kv, int(meta.get(f"{arch}.attention.key_length", 256)), n_ctx)


def recommended(header, target: str, ram_mb: int, n_ctx: int | None) -> dict:
    """Settings for the RAM class: the largest power-of-two context (<= 8192) that fits the budget."""
    budget = budget_mb(target, ram_mb)
    file_mb = header.file_size / MB
    base = file_mb * 0.92 + 0.43 * 1024 if target != "pi" else file_mb + 300
    trained = header.context_length or 8192
    if n_ctx is None:
        n_ctx = 512
        while n_ctx * 2 <= min(8192, trained) and base + _kv_mb(header, n_ctx * 2) <= budget:
            n_ctx *= 2
    need = int(base + _kv_mb(header, n_ctx))
    if need > budget:
        raise InvalidArgumentError(
            f"{header.path.name} needs about {need} MB at {n_ctx} tokens, more than a {ram_mb // 1024} GB "
            f"{target} target allows ({budget} MB): pick a smaller quant or model (edge-runtime recommend --ram "
            f"{ram_mb // 1024}G), or a smaller --ctx")
    # phones: their big cores, a Pi: its four cores
    return {"ram_class_mb": ram_mb, "n_ctx": n_ctx, "n_threads": 4, "n_batch": 256, "use_mmap": True,
            "min_ram_mb": need}


def _file_entry(path: Path, root: Path, role: str) -> dict:
    return {"path": path.relative_to(root).as_posix(), "size": path.stat().st_size, "sha256": sha256_file(path),
            "role": role}


def package(model: str | os.PathLike[str], out_dir: str | os.PathLike[str], settings: BundleSettings,
            projectors: list[str] | None = None) -> dict:
    """Write the bundle; returns its manifest."""
    if settings.target not in TARGETS:
        raise InvalidArgumentError(f"--target must be android, ios or pi, not {settings.target!r}")
    model = Path(model)
    header = read_header(model)
    limit, total_limit, default_ram = TARGETS[settings.target]
    max_shard = settings.max_shard or limit or (1 << 62)
    if limit and max_shard > limit:
        raise InvalidArgumentError(f"--max-shard {max_shard} is over the {settings.target} store's per-file limit "
                                   f"({limit} bytes)")
    ram = settings.ram_mb or default_ram
    rec = recommended(header, settings.target, ram, settings.n_ctx)
    out_dir = Path(out_dir)
    stem = model.stem
    with staged_folder(out_dir) as stage:
        # android: OUTPUT is an asset-pack module (settings.gradle: include ':OUTPUT'), its assets under src/main
        files_dir = stage / {"android": "src/main/assets/models", "ios": "Models", "pi": "model"}[settings.target]
        files_dir.mkdir(parents=True)
        shards = split_gguf(model, files_dir, stem, max_shard, progress=settings.progress)
        extra = []
        for p in projectors or []:
            dst = files_dir / Path(p).name
            shutil.copyfile(p, dst)
            data = Path(p).with_name(Path(p).name + ".data")  # an ONNX encoder's external weights
            for side in Path(p).parent.glob(Path(p).name + ".*.data"):
                shutil.copyfile(side, files_dir / side.name)
                extra.append(files_dir / side.name)
            if data.exists():
                shutil.copyfile(data, files_dir / data.name)
                extra.append(files_dir / data.name)
            extra.append(dst)
        total = sum(s.size for s in shards) + sum(p.stat().st_size for p in extra)
        if total_limit and total > total_limit:
            raise InvalidArgumentError(f"the bundle is {total / GB:.2f} GB, over the {settings.target} limit of "
                                       f"{total_limit / GB:.0f} GB: pick a smaller quant or model")
        manifest = {
            "format": MANIFEST_FORMAT,
            "target": settings.target,
            "name": str(header.metadata.get("general.name", stem)),
            "architecture": header.architecture,
            "quantization": _quant(header),
            "first_shard": shards[0].path.relative_to(stage).as_posix(),
            "max_shard_bytes": max_shard if limit or settings.max_shard else None,
            "files": [_file_entry(s.path, stage, "model") for s in shards]
                     + [_file_entry(p, stage, "projector" if p.suffix in (".gguf", ".onnx") else "projector-data")
                        for p in extra],
            "chat_template": header.chat_template,
            "special_tokens": header.special_tokens(),
            "modalities": ["text"] + (["media"] if projectors else []),
            "context_length_trained": header.context_length,
            "recommended": rec,
            "created_by": "edge-runtime package",
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _target_files(stage, settings.target, manifest, re.sub(r"\W", "_", out_dir.name))
    if settings.zip:  # DIR.zip beside DIR: stored, page-aligned entries
        members = [(p, p.relative_to(out_dir).as_posix()) for p in sorted(out_dir.rglob("*")) if p.is_file()]
        with atomic_path(out_dir.with_name(out_dir.name + ".zip")) as tmp:
            write_aligned_zip(tmp, members)
    return manifest


def _quant(header) -> str:
    from gguf.constants import LlamaFileType

    ft = header.metadata.get("general.file_type")
    try:
        return LlamaFileType(int(ft)).name.removeprefix("MOSTLY_") if ft is not None else "unknown"
    except ValueError:
        return f"type {ft}"


def _target_files(stage: Path, target: str, manifest: dict, pack: str) -> None:
    first = manifest["first_shard"]
    if target == "android":
        (stage / "build.gradle").write_text(
            "// An install-time asset pack holding the model: this folder is the module.\n"
            f"// In settings.gradle: include ':{pack}'\n"
            f"// In the app's build.gradle:  android {{ assetPacks = [':{pack}']\n"
            "//     androidResources { noCompress += ['gguf', 'onnx', 'data'] } }\n"
            "// Stored uncompressed, each file can be opened by descriptor (AssetManager.openFd) and memory-mapped\n"
            "// by llama.cpp from its offset (llama_model_load_from_file_ptr), or copied out once.\n"
            "plugins { id 'com.android.asset-pack' }\n"
            f"assetPack {{\n    packName = \"{pack}\"\n    dynamicDelivery {{ deliveryType = \"install-time\" }}\n}}\n")
    elif target == "ios":
        tags = {f["path"]: f"model-part-{i + 1}" for i, f in enumerate(manifest["files"])}
        (stage / "ondemand-tags.json").write_text(json.dumps(
            {"note": "Add Models/ to the app target; give each file its on-demand resource tag (Xcode: Resource "
                     "Tags), request them with NSBundleResourceRequest before loading the first shard.",
             "tags": tags}, indent=2) + "\n")
    else:
        (stage / "serve.env").write_text(
            f'EDGE_RUNTIME_SERVE_ARGS="--model /var/lib/edge-runtime/{first} --ctx {manifest["recommended"]["n_ctx"]} '
            f'--threads {manifest["recommended"]["n_threads"]}"\n')
        units = Path(__file__).resolve().parents[2] / "platforms" / "raspberry-pi" / "systemd"
        if units.is_dir():
            (stage / "systemd").mkdir()
            for u in units.glob("*.service.in"):
                shutil.copyfile(u, stage / "systemd" / u.name)
