"""The model catalog (`models/catalog.json`, shipped as package data): what exists, and what fits a machine.

RAM a model needs at a context of N tokens (what `recommend` and `pull` without a quant use):

    need = file + kv(N) + overhead
    kv(N) = n_layer x n_head_kv x head_dim x 2 (K and V) x 2 bytes (f16) x N
            (every layer at full N: the runtime keeps a full-size cache for sliding-window layers too)
    overhead = 300 MB (compute buffers, Python, the tokenizer) + 5% of the file

Weights are memory-mapped, so "fits" compares `need` with the memory available now (MemAvailable), not
with the total.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edge_runtime.errors import InvalidArgumentError

OVERHEAD_MB = 300
TASKS = ("chat", "translate", "asr", "vision")
_QUALITY = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M")  # best first


def catalog_path() -> Path:
    if os.environ.get("EDGE_RUNTIME_CATALOG"):  # another catalog (an organisation's own, or a test's)
        return Path(os.environ["EDGE_RUNTIME_CATALOG"])
    repo = Path(__file__).resolve().parents[2] / "models" / "catalog.json"
    if repo.exists():
        return repo
    return Path(str(resources.files("edge_runtime") / "data" / "catalog.json"))


def kv_cache_mb(n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int) -> float:
    """kv(N) above: f16 keys and values for every layer at full context."""
    return n_layer * n_head_kv * head_dim * 2 * 2 * n_ctx / 2**20


def ram_need_mb(file_mb: float, kv_mb: float) -> int:
    """need above: the file, its KV cache, and the fixed and proportional overhead."""
    return int(file_mb + kv_mb + OVERHEAD_MB + 0.05 * file_mb)


@dataclass(frozen=True)
class Entry:
    id: str
    data: dict

    @property
    def quants(self) -> dict[str, int]:
        return dict(self.data.get("gguf", {}).get("quants") or self.data.get("approx_mb") or {})

    def kv_mb(self, n_ctx: int) -> float:
        kv = self.data["kv"]
        return kv_cache_mb(kv["n_layer"], kv["n_head_kv"], kv["head_dim"], n_ctx)

    def need_mb(self, quant: str, n_ctx: int) -> int:
        """RAM for this quant at this context (the formula above); projector included when it has one."""
        file_mb = self.quants[quant] + self.data.get("gguf", {}).get("mmproj_mb", 0)
        return ram_need_mb(file_mb, self.kv_mb(n_ctx))


def load_catalog(path: Path | None = None) -> list[Entry]:
    data = json.loads((path or catalog_path()).read_text())
    return [Entry(m["id"], m) for m in data["models"]]


def validate(entries: list[Entry]) -> list[str]:
    """Problems in the catalog (empty when every entry is consistent)."""
    problems, seen = [], set()
    for e in entries:
        d = e.data
        where = e.id
        if e.id in seen:
            problems.append(f"{where}: duplicate id")
        seen.add(e.id)
        for key in ("family", "kind", "params_m", "checkpoint", "modalities", "context_length", "kv"):
            if key not in d:
                problems.append(f"{where}: missing {key}")
        if d.get("family") not in ("gemma", "gemma2", "gemma3", "gemma3n", "gemma4"):
            problems.append(f"{where}: unknown family {d.get('family')}")
        if d.get("kind") not in ("base", "instruct"):
            problems.append(f"{where}: kind must be base or instruct")
        if (d.get("kind") == "instruct") != e.id.endswith("-it"):
            problems.append(f"{where}: instruct models end in -it, base models do not")
        if "gguf" not in d and not d.get("convert_only"):
            problems.append(f"{where}: neither a gguf source nor convert_only")
        if "gguf" in d:
            if "/" not in d["gguf"].get("repo", ""):
                problems.append(f"{where}: gguf.repo must be ORG/NAME")
            if not d["gguf"].get("quants"):
                problems.append(f"{where}: gguf.quants is empty")
        for q, mb in e.quants.items():
            if q not in _QUALITY:
                problems.append(f"{where}: unknown quant {q}")
            # a file holds roughly params x bits / 8: catch sizes that cannot be right
            bits = mb * 8 * 2**20 / (d.get("params_m", 1) * 1e6)
            if not 2.5 <= bits <= 17.5:
                problems.append(f"{where}: {q} at {mb} MB is {bits:.1f} bits per parameter")
        if "image" in d.get("modalities", []) and "gguf" in d and d["family"] == "gemma3" and "mmproj_mb" not in d["gguf"]:
            problems.append(f"{where}: an image model without its projector size")
        for t in d.get("tasks", []):
            if t not in TASKS:
                problems.append(f"{where}: unknown task {t}")
            needs = {"asr": "audio", "vision": "image"}.get(t)
            if needs and needs not in d.get("modalities", []):
                problems.append(f"{where}: task {t} without the {needs} modality")
    return problems


@dataclass(frozen=True)
class Choice:
    entry: Entry
    quant: str
    need_mb: int
    why: str


def find_entry(entries: list[Entry], model_id: str) -> Entry | None:
    return next((e for e in entries if e.id.lower() == model_id.lower()), None)


def best_quant(entry: Entry, ram_mb: int, n_ctx: int) -> tuple[str, int] | None:
    """The highest-quality quant whose need fits `ram_mb`."""
    for q in _QUALITY:
        if q in entry.quants and entry.need_mb(q, n_ctx) <= ram_mb:
            return q, entry.need_mb(q, n_ctx)
    return None


def recommend(entries: list[Entry], ram_mb: int, task: str = "chat", n_ctx: int = 4096) -> list[Choice]:
    """Models for `task` that fit `ram_mb` at `n_ctx`, the best first: the most parameters that fit, at the
    best quant that fits (a larger model at Q4_K_M beats a smaller one at Q8_0)."""
    if task not in TASKS:
        raise InvalidArgumentError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
    out = []
    for e in entries:
        if e.data["kind"] != "instruct" or task not in e.data.get("tasks", []):
            continue
        fit = best_quant(e, ram_mb, n_ctx)
        if fit:
            q, need = fit
            how = "convert from the checkpoint" if e.data.get("convert_only") else f"from {e.data['gguf']['repo']}"
            out.append(Choice(e, q, need, f"{e.data['params_m'] / 1000:.1f}B parameters at {q} needs about "
                                           f"{need} MB at {n_ctx} tokens of context ({how})"))
    return sorted(out, key=lambda c: (-c.entry.data["params_m"], _QUALITY.index(c.quant)))


def parse_size_mb(text: str) -> int:
    """"4G", "512M", "1.5GB", "3000" (MB) -> MB."""
    import re

    m = re.fullmatch(r"\s*([\d.]+)\s*([GgMm]?)[Bb]?\s*", text)
    if not m:
        raise InvalidArgumentError(f"{text!r} is not a size: use e.g. 4G or 512M")
    value = float(m.group(1))
    return int(value * 1024) if m.group(2).upper() == "G" else int(value)
