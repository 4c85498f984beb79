"""Output types, presets and per-tensor type plans."""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from edge_runtime.errors import InvalidArgumentError

Q = gguf.GGMLQuantizationType

# Types written directly by our writer: name -> (tensor type, llama_ftype)
DIRECT_TYPES: dict[str, tuple[Q, gguf.LlamaFileType]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}

# llama.cpp quantization names handled by llama_model_quantize -> llama_ftype
LLAMA_TYPES: dict[str, gguf.LlamaFileType] = {
    name[len("MOSTLY_"):]: ft
    for name, ft in gguf.LlamaFileType.__members__.items()
    if name.startswith("MOSTLY_") and name not in ("MOSTLY_F16", "MOSTLY_BF16", "MOSTLY_Q8_0")
}

# Approximate bits per weight of the bulk of a model at each type (for size estimates)
_BITS = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.7, "Q5_K_S": 5.5,
         "Q5_0": 5.5, "Q5_1": 6.0, "Q4_K_M": 4.9, "Q4_K_S": 4.6, "Q4_0": 4.5, "Q4_1": 5.0, "IQ4_NL": 4.5,
         "IQ4_XS": 4.25, "Q3_K_M": 3.9, "Q3_K_S": 3.5, "Q3_K_L": 4.3, "Q2_K": 3.0}


@dataclass(frozen=True)
class Preset:
    name: str
    outtype: str
    summary: str


PRESETS = {
    "max-efficiency": Preset("max-efficiency", "Q4_K_M", "smallest and fastest; small quality loss"),
    "balanced": Preset("balanced", "Q8_0", "near-lossless at half the size of 16-bit"),
    "quality": Preset("quality", "bf16", "lossless for bf16 checkpoints; largest and slowest"),
}


@dataclass(frozen=True)
class OutType:
    """A resolved --outtype: either written directly or quantized by llama.cpp from a 16-bit file."""

    name: str  # canonical: f32/f16/bf16/q8_0 or a llama.cpp name (Q4_K_M, ...)
    direct: Q | None
    ftype: int

    @property
    def via_llama(self) -> bool:
        return self.direct is None


def resolve_outtype(outtype: str | None, preset: str | None) -> OutType:
    if preset is not None:
        if preset not in PRESETS:
            raise InvalidArgumentError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
        outtype = PRESETS[preset].outtype
    if not outtype:
        outtype = "f16"
    key = outtype.strip()
    if key.lower() in DIRECT_TYPES:
        qtype, ft = DIRECT_TYPES[key.lower()]
        return OutType(key.lower(), qtype, int(ft))
    upper = key.upper()
    if upper in LLAMA_TYPES:
        return OutType(upper, None, int(LLAMA_TYPES[upper]))
    names = ", ".join(list(DIRECT_TYPES) + sorted(LLAMA_TYPES))
    raise InvalidArgumentError(f"unknown output type {outtype!r}; use one of {names}")


def tensor_type(out: Q, shape: tuple[int, ...], keep_f32: bool) -> Q:
    """The type one tensor gets in a directly written file (llama.cpp's converter rules)."""
    if keep_f32 or out == Q.F32:
        return Q.F32
    if out == Q.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
        return Q.F16  # rows that do not split into Q8_0 blocks
    return out


def estimate_size(n_params: int, outtype: str, n_embd_params: int = 0, embd_row: int = 256) -> int:
    """Rough file size in bytes for `n_params` weights at `outtype`.

    llama.cpp's K-quant mixes give the (tied) token embedding more bits: Q6_K for
    Q4_K_M/Q5_K_M (Q8_0 when its rows do not split into 256-wide K blocks), which
    matters for Gemma, whose vocabulary is large.
    """
    bits = _BITS.get(outtype, 16)
    embd_bits = bits
    if outtype in ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q3_K_M", "Q3_K_L"):
        embd_bits = 6.5625 if embd_row % 256 == 0 else 8.5
    return int(((n_params - n_embd_params) * bits + n_embd_params * embd_bits) / 8)


def describe_presets(n_params: int | None = None, n_embd_params: int = 0, embd_row: int = 256) -> list[dict]:
    """Presets with their type and, given a parameter count, expected file size and RAM."""
    rows = []
    for p in PRESETS.values():
        row = {"preset": p.name, "outtype": p.outtype, "summary": p.summary}
        if n_params:
            size = estimate_size(n_params, p.outtype, n_embd_params, embd_row)
            row["size_bytes"] = size
            # weights + KV cache and compute buffers at a small (2k) context
            row["ram_bytes"] = int(size * 1.05) + 150 * 2**20
        rows.append(row)
    return rows
