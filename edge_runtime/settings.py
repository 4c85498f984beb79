"""Runtime settings: what the user asked for, resolved against the machine and the model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_runtime.backend.core import KV_CACHE_TYPES, ContextParams
from edge_runtime.errors import ContextSizeError, InvalidArgumentError
from edge_runtime.hardware import CpuInfo, available_memory_mb, detect_cpu

if TYPE_CHECKING:
    from edge_runtime.rpc.cluster import RpcSettings

DEFAULT_CTX = 4096
MIN_CTX = 64


@dataclass(frozen=True)
class RuntimeSettings:
    """Load-time settings. None means "decide from the machine and the model"."""

    n_ctx: int | None = None
    n_threads: int | None = None
    n_threads_batch: int | None = None
    n_batch: int | None = None
    n_ubatch: int | None = None
    use_mmap: bool = True
    use_mlock: bool = False
    flash_attn: bool | None = None
    kv_cache_type: str = "f16"
    # A full-size cache for sliding-window layers: costs memory, but lets the
    # runtime roll back and shift the cache (KV reuse across chat turns).
    swa_full: bool = True
    # Fewer generation threads while other processes keep cores busy (see cpu_load.py).
    # None: on when n_threads is chosen automatically.
    adaptive_threads: bool | None = None
    # Repack quantized weights for this CPU's faster kernels. RPC workers do not, so a run on workers
    # matches a local run bit for bit only with repack=False.
    repack: bool = True
    # Layers on llama.cpp RPC workers (rpc/): the weights then live in a child process.
    rpc: "RpcSettings | None" = None
    # Streams decoded together (slots of the batch engine, batching.py), each with its own n_ctx
    # of KV. 1: one generation at a time. None: chosen from the cores and the free memory.
    parallel: int | None = 1
    # LoRA adapters (GGUF, `edge-runtime convert-lora`) applied from the start: (path, scale) pairs.
    lora: tuple[tuple[str, float], ...] = ()

    def replace(self, **changes: object) -> "RuntimeSettings":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ResolvedSettings:
    """Concrete settings with the reason for each automatic choice."""

    n_ctx: int
    n_threads: int
    n_threads_batch: int
    n_batch: int
    n_ubatch: int
    use_mmap: bool
    use_mlock: bool
    flash_attn: bool | None
    kv_cache_type: str
    swa_full: bool
    adaptive_threads: bool
    reasons: dict[str, str]
    parallel: int = 1

    def context_params(self) -> ContextParams:
        return ContextParams(
            n_ctx=self.n_ctx * self.parallel,  # llama.cpp gives each sequence n_ctx / n_seq_max
            n_batch=self.n_batch,
            n_ubatch=self.n_ubatch,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads_batch,
            flash_attn=self.flash_attn,
            type_k=self.kv_cache_type,
            type_v=self.kv_cache_type,
            swa_full=self.swa_full,
            n_seq_max=self.parallel,
            kv_unified=self.parallel > 1,
        )

    def as_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out.pop("reasons")
        return out


MAX_AUTO_PARALLEL = 8
KV_MEMORY_SHARE = 0.25  # of the free memory, for the extra slots' KV when --parallel is automatic


def auto_parallel(cpu: CpuInfo, kv_mb_per_slot: float, available_mb: int | None) -> tuple[int, str]:
    """Slots for a server: two per physical core (decode is memory-bound; batching fills idle
    arithmetic) up to 8, fewer when their KV would take over a quarter of the free memory."""
    n = max(2, min(MAX_AUTO_PARALLEL, 2 * cpu.physical_cores))
    reason = f"two per physical core ({cpu.physical_cores}), at most {MAX_AUTO_PARALLEL}"
    if available_mb and kv_mb_per_slot > 0:
        fit = int(available_mb * KV_MEMORY_SHARE // kv_mb_per_slot)
        if fit < n:
            n = max(1, fit)
            reason = (f"as many {kv_mb_per_slot:.0f} MB KV caches as fit in a quarter of the "
                      f"{available_mb} MB free memory")
    return n, reason


def resolve(settings: RuntimeSettings, *, trained_ctx: int | None, cpu: CpuInfo | None = None,
            kv_mb_per_token: float = 0.0) -> ResolvedSettings:
    """Fill every automatic setting; raise for settings that cannot work. `kv_mb_per_token`
    (the model's f16 KV size per position) sizes an automatic `parallel`."""
    cpu = cpu or detect_cpu()
    reasons: dict[str, str] = {}

    if settings.n_ctx is None:
        n_ctx = min(DEFAULT_CTX, trained_ctx or DEFAULT_CTX)
        reasons["n_ctx"] = f"default {DEFAULT_CTX}, capped at the model's trained {trained_ctx}"
    else:
        n_ctx = settings.n_ctx
        if n_ctx < MIN_CTX:
            raise ContextSizeError(f"a context of {n_ctx} tokens is too small; use at least {MIN_CTX}")
        if trained_ctx and n_ctx > trained_ctx:
            raise ContextSizeError(
                f"a context of {n_ctx} tokens is larger than this model supports ({trained_ctx}); "
                f"use --ctx {trained_ctx} or less"
            )
        reasons["n_ctx"] = "requested"

    if settings.n_threads is None:
        n_threads = max(1, cpu.performance_cores)
        reasons["n_threads"] = (
            f"{cpu.performance_cores} performance cores"
            + (f" (ignoring {cpu.efficiency_cores} efficiency cores)" if cpu.efficiency_cores else "")
        )
    else:
        n_threads = settings.n_threads
        if n_threads < 1:
            raise InvalidArgumentError(f"threads must be at least 1, not {n_threads}")
        reasons["n_threads"] = "requested"
    adaptive = settings.n_threads is None if settings.adaptive_threads is None else settings.adaptive_threads
    if adaptive:
        reasons["adaptive_threads"] = "one thread fewer per core other processes keep busy (llama.cpp's threads spin)"
    # Prompt processing is compute-bound and profits from every physical core.
    n_threads_batch = settings.n_threads_batch or max(n_threads, cpu.physical_cores if settings.n_threads is None else n_threads)

    n_batch = min(settings.n_batch or 512, n_ctx)
    n_ubatch = min(settings.n_ubatch or 512, n_batch)
    if n_batch < 1 or n_ubatch < 1:
        raise InvalidArgumentError("batch sizes must be at least 1")

    kv = settings.kv_cache_type
    if kv not in KV_CACHE_TYPES:
        raise InvalidArgumentError(f"unknown KV cache type {kv!r}; use one of {', '.join(KV_CACHE_TYPES)}")
    flash_attn = settings.flash_attn
    if kv not in ("f16", "f32", "bf16"):
        if flash_attn is False:
            raise InvalidArgumentError(f"a {kv} KV cache needs flash attention; drop --no-flash-attn or use f16")
        flash_attn = True
        reasons["flash_attn"] = f"required by the {kv} V cache"
    elif flash_attn is None:
        reasons["flash_attn"] = "llama.cpp decides per backend"
    else:
        reasons["flash_attn"] = "requested"

    if settings.parallel is None:
        parallel, reasons["parallel"] = auto_parallel(cpu, kv_mb_per_token * n_ctx, available_memory_mb())
    else:
        parallel = settings.parallel
        if not 1 <= parallel <= 256:
            raise InvalidArgumentError(f"parallel must be from 1 to 256 streams, not {parallel}")
        reasons["parallel"] = "requested" if parallel > 1 else "one generation at a time"
    if parallel > 1 and adaptive:
        adaptive = False
        reasons["adaptive_threads"] = "off: the batch engine keeps every thread for the streams it carries"

    return ResolvedSettings(
        parallel=parallel,
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_threads_batch=n_threads_batch,
        n_batch=n_batch,
        n_ubatch=n_ubatch,
        use_mmap=settings.use_mmap,
        use_mlock=settings.use_mlock,
        flash_attn=flash_attn,
        kv_cache_type=kv,
        swa_full=settings.swa_full,
        adaptive_threads=adaptive,
        reasons=reasons,
    )
