"""A model by name, fetched and registered: catalog ids (with the quant that fits), `REPO_ID[:QUANT]`, and
checkpoint-only catalog models converted here. What `pull` and `package` call."""

from __future__ import annotations

from edge_runtime.errors import PullError
from edge_runtime.hub import store
from edge_runtime.hub.catalog import Entry, find_entry, load_catalog, ram_need_mb
from edge_runtime.hub.pull import PulledModel, PullRequest, parse_name, pull


def free_ram_mb() -> int:
    from edge_runtime.hardware import available_memory_mb, total_memory_mb

    return available_memory_mb() or total_memory_mb() or 2048


def fetch(name: str, *, ram_mb: int | None = None, n_ctx: int = 4096, convert: bool = False,
          quant: str | None = None, progress: bool = True) -> PulledModel:
    """Pull `name` (the best quant that fits `ram_mb`, default: the memory available now) and register it."""
    entry = find_entry(load_catalog(), name.split(":")[0])
    quant = quant or (name.split(":")[1].upper() if ":" in name else None)
    ram = ram_mb or free_ram_mb()
    if entry is not None and ("gguf" not in entry.data or convert):
        if not convert:
            raise PullError(f"{entry.id} exists only as a checkpoint ({entry.data['checkpoint']}): add --convert to "
                            "fetch it and convert it here (or `edge-runtime convert` it elsewhere)")
        return _convert(entry, quant or entry.data.get("recommended_quant", "Q4_K_M"), progress)
    if entry is not None:
        request, aliases = PullRequest(entry.id, entry.data["gguf"]["repo"], quant), []
        if quant:
            aliases = [f"{request.repo_id}:{quant}"]
    else:
        request, aliases = parse_name(name), []

    def fits(size_bytes: int) -> bool:  # catalog.py's formula, with the file's exact size from the Hub
        kv_mb = entry.kv_mb(n_ctx) if entry else size_bytes / 2**20 * 0.1
        return ram_need_mb(size_bytes / 2**20, kv_mb) <= ram

    model = pull(request, progress=progress, fits=fits)
    store.add(model, *aliases)
    return model


def _convert(entry: Entry, quant: str, progress: bool) -> PulledModel:
    from edge_runtime.conversion import convert_checkpoint

    out = store.home() / "models" / f"{entry.id}-{quant}.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    convert_checkpoint(entry.data["checkpoint"], out, quant, progress=progress)
    model = PulledModel(entry.id, entry.data["checkpoint"], "main", "", str(out), quant.upper(), out.stat().st_size)
    store.add(model)
    return model
