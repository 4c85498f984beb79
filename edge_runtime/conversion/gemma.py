"""Gemma 1/2/3/3n/4 text models: Hugging Face tensor names and config -> GGUF tensors and metadata.

Follows llama.cpp's converter contract (vendored `conversion/gemma.py`):
Gemma 1-3 add 1.0 to RMSNorm weights, Gemma 3n/4 do not; the output is tied
to `token_embd`; Gemma 3n pads the vocabulary, stacks the AltUp projections
and writes `activation_sparsity_scale`; Gemma 4 writes per-layer head sizes
and a `rope_freqs` tensor that emulates proportional RoPE.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edge_runtime.conversion.checkpoint import Checkpoint, TensorRef, bf16_to_f32
from edge_runtime.errors import ConversionError

# HF architecture name -> GGUF architecture
ARCHITECTURES = {
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
    "Gemma3nForCausalLM": "gemma3n",
    "Gemma3nForConditionalGeneration": "gemma3n",
    "Gemma4ForCausalLM": "gemma4",
    "Gemma4ForConditionalGeneration": "gemma4",
}

# Prefixes of the language model inside multimodal checkpoints, rewritten to "model."
_TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "model.text_model.")
# Towers and projectors that belong to an mmproj file, not the text model
_SKIP_PREFIXES = (
    "model.vision_tower.", "vision_tower.", "model.audio_tower.", "audio_tower.",
    "model.multi_modal_projector.", "multi_modal_projector.", "model.embed_vision.",
    "model.embed_audio.", "embed_vision.", "embed_audio.",
)

_LAYER_MAP = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    # Gemma 3n
    "altup.correct_output_scale": "altup_correct_scale.weight",
    "altup.correction_coefs.weight": "altup_correct_coef.weight",
    "altup.prediction_coefs.weight": "altup_predict_coef.weight",
    "altup.modality_router.weight": "altup_router.weight",
    "altup.router_norm.weight": "altup_router_norm.weight",
    "laurel.linear_left.weight": "laurel_l.weight",
    "laurel.linear_right.weight": "laurel_r.weight",
    "laurel.post_laurel_norm.weight": "laurel_post_norm.weight",
    # Gemma 3n and 4 per-layer embeddings
    "per_layer_input_gate.weight": "inp_gate.weight",
    "per_layer_projection.weight": "proj.weight",
    "post_per_layer_input_norm.weight": "post_norm.weight",
    # Gemma 4
    "layer_scalar": "layer_output_scale.weight",
}

_GLOBAL_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "model.embed_tokens_per_layer.weight": "per_layer_token_embd.weight",
    "model.per_layer_model_projection.weight": "per_layer_model_proj.weight",
    "model.per_layer_projection_norm.weight": "per_layer_proj_norm.weight",
}

# Tensors llama.cpp keeps in F32 whatever the output type (besides 1-D tensors and norms)
_F32_SUFFIXES = ("altup_correct_coef.weight", "altup_predict_coef.weight", "rope_freqs.weight")

Loader = Callable[[], np.ndarray]


@dataclass
class PlannedTensor:
    """One GGUF tensor to write: its name, numpy shape and a loader of its values."""

    name: str
    shape: tuple[int, ...]
    load: Loader  # float32, float16, or uint16 (= bfloat16 bits)
    keep_f32: bool = False
    sources: tuple[str, ...] = ()

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class ModelPlan:
    """Everything a GGUF needs from the checkpoint, apart from the tokenizer."""

    arch: str
    hf_arch: str
    config: dict  # the text config
    n_vocab: int
    tensors: list[PlannedTensor] = field(default_factory=list)
    metadata: list[tuple[str, str, object]] = field(default_factory=list)  # (writer method, key or "", value)


def gguf_arch(ckpt: Checkpoint) -> str:
    hf = ckpt.architecture
    arch = ARCHITECTURES.get(hf)
    if arch is None:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ConversionError(f"{ckpt.dir / 'config.json'}: unknown architecture {hf!r}; supported: {known}")
    return arch


def _text_name(name: str) -> str | None:
    """Checkpoint tensor name -> "model.*"/"lm_head.*" name of the text model, None to skip."""
    if name.startswith(_SKIP_PREFIXES):
        return None
    for prefix in _TEXT_PREFIXES:
        if name.startswith(prefix):
            return "model." + name[len(prefix):]
    if name.startswith("language_model.lm_head."):
        return name[len("language_model."):]
    return name


# Projections llama.cpp can apply a LoRA adapter to (`llama-adapter.cpp` matches these GGUF names).
LORA_TARGETS = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")


def layer_tensor_name(hf_name: str) -> str | None:
    """A checkpoint's projection weight -> its GGUF name (`model.layers.3.mlp.up_proj.weight` ->
    `blk.3.ffn_up.weight`), multimodal prefixes included; None for anything else."""
    text = _text_name(hf_name)
    m = re.match(r"model\.layers\.(\d+)\.(.+)$", text or "")
    target = _LAYER_MAP.get(m.group(2)) if m else None
    return f"blk.{m.group(1)}.{target}" if target in LORA_TARGETS else None


def _hp(cfg: dict, key: str, default=None, *, path: str = "config.json"):
    value = cfg.get(key, default)
    if value is None:
        raise ConversionError(f"{path}: missing {key!r}")
    return value


def _layer_types(cfg: dict, n_layer: int, pattern: int) -> list[str]:
    types = cfg.get("layer_types")
    if types:
        return list(types)
    # Gemma 3 before layer_types: every `pattern`-th layer is global
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layer)]


def _rope(cfg: dict) -> tuple[dict, dict]:
    """(full-attention, sliding-attention) RoPE parameters, from old or new style configs."""
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and ("full_attention" in rp or "sliding_attention" in rp):
        return rp.get("full_attention", {}), rp.get("sliding_attention", {})
    full = dict(rp) if isinstance(rp, dict) else {}
    full.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    if isinstance(cfg.get("rope_scaling"), dict):
        for k, v in cfg["rope_scaling"].items():
            full.setdefault("rope_type" if k == "type" else k, v)
    swa = {"rope_theta": cfg["rope_local_base_freq"]} if "rope_local_base_freq" in cfg else {}
    return full, swa


def _head_dims(cfg: dict, arch: str, types: list[str]) -> list[int]:
    head = int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    if arch != "gemma4":
        return [head] * len(types)
    full = _gemma4_full(cfg, types, "head_dim", "global_head_dim") or head
    return [full if t == "full_attention" else head for t in types]


def _gemma4_full(cfg: dict, types: list[str], key: str, global_key: str):
    if cfg.get(global_key) is not None:
        return int(cfg[global_key])
    for idx, layer_cfg in (cfg.get("per_layer_config") or {}).items():
        i = int(idx)
        if i < len(types) and types[i] == "full_attention" and key in layer_cfg:
            return int(layer_cfg[key])
    return None


def _loader(ref: TensorRef, *, shift: float = 0.0, rows: int | None = None) -> Loader:
    """Load a tensor; add `shift` (norm offset) and trim or zero-pad to `rows` rows."""

    def load() -> np.ndarray:
        data = ref.raw()
        if shift:
            data = (bf16_to_f32(data) if ref.dtype == "BF16" else data.astype(np.float32)) + np.float32(shift)
        elif ref.dtype not in ("F32", "F16", "BF16"):
            data = data.astype(np.float32)
        if rows is not None and data.shape[0] != rows:
            if data.shape[0] > rows:
                data = data[:rows]
            else:
                pad = np.zeros((rows - data.shape[0],) + data.shape[1:], dtype=data.dtype)
                data = np.concatenate([data, pad])
        return data

    return load


def _stack_loader(refs: list[TensorRef]) -> Loader:
    def load() -> np.ndarray:
        parts = [r.raw() for r in refs]
        if len({p.dtype for p in parts}) > 1:
            parts = [r.to_f32() for r in refs]
        return np.stack(parts)

    return load


def _const_loader(values: np.ndarray) -> Loader:
    return lambda: values


def plan_model(ckpt: Checkpoint, n_vocab: int) -> ModelPlan:
    """Map the checkpoint's text model to GGUF tensors and metadata, checking shapes against the config."""
    arch = gguf_arch(ckpt)
    cfg = ckpt.text_config
    cpath = str(ckpt.dir / "config.json")
    plan = ModelPlan(arch=arch, hf_arch=ckpt.architecture, config=cfg, n_vocab=n_vocab)
    n_layer = int(_hp(cfg, "num_hidden_layers", path=cpath))
    n_embd = int(_hp(cfg, "hidden_size", path=cpath))
    n_head = int(_hp(cfg, "num_attention_heads", path=cpath))
    n_head_kv = int(cfg.get("num_key_value_heads") or n_head)
    types = _layer_types(cfg, n_layer, int(cfg.get("sliding_window_pattern") or 6))
    if len(types) != n_layer:
        raise ConversionError(f"{cpath}: layer_types has {len(types)} entries for {n_layer} layers")
    if arch == "gemma3n" and not cfg.get("final_logit_softcapping"):
        raise ConversionError(f"{cpath}: Gemma 3n without final_logit_softcapping cannot run in llama.cpp (it always soft-caps)")
    if arch == "gemma4" and "sliding_attention" not in types:
        raise ConversionError(f"{cpath}: Gemma 4 without any sliding_attention layer cannot run in llama.cpp")
    head_dims = _head_dims(cfg, arch, types)
    n_head_kv_full = n_head_kv
    if arch == "gemma4":
        n_head_kv_full = _gemma4_full(cfg, types, "num_key_value_heads", "num_global_key_value_heads") or n_head_kv
    kv_heads = [n_head_kv_full if t == "full_attention" else n_head_kv for t in types]
    ff = cfg.get("intermediate_size")
    n_ff = list(ff) if isinstance(ff, list) else [int(_hp(cfg, "intermediate_size", path=cpath))] * n_layer
    n_kv_shared = int(cfg.get("num_kv_shared_layers") or 0)
    if arch == "gemma4" and cfg.get("use_double_wide_mlp"):
        n_ff = [f if i < n_layer - n_kv_shared else 2 * f for i, f in enumerate(n_ff)]
    norm_shift = 1.0 if arch in ("gemma", "gemma2", "gemma3") else 0.0
    n_pl = int(cfg.get("hidden_size_per_layer_input") or 0) if arch in ("gemma3n", "gemma4") else 0

    # -- tensors ------------------------------------------------------------
    by_name: dict[str, TensorRef] = {}
    for name, ref in ckpt.tensors.items():
        text = _text_name(name)
        if text is not None:
            by_name[text] = ref

    def expected(gname: str) -> tuple[int, ...] | None:
        m = re.match(r"blk\.(\d+)\.(.+)$", gname)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            hd = head_dims[i]
            shapes = {
                "attn_q.weight": (n_head * hd, n_embd),
                "attn_k.weight": (kv_heads[i] * hd, n_embd),
                "attn_v.weight": (kv_heads[i] * hd, n_embd),
                "attn_output.weight": (n_embd, n_head * hd),
                "attn_q_norm.weight": (hd,),
                "attn_k_norm.weight": (hd,),
                "ffn_gate.weight": (n_ff[i], n_embd),
                "ffn_up.weight": (n_ff[i], n_embd),
                "ffn_down.weight": (n_embd, n_ff[i]),
                "attn_norm.weight": (n_embd,),
                "post_attention_norm.weight": (n_embd,),
                "ffn_norm.weight": (n_embd,),
                "post_ffw_norm.weight": (n_embd,),
            }
            if n_pl:
                shapes.update({"inp_gate.weight": (n_pl, n_embd), "proj.weight": (n_embd, n_pl), "post_norm.weight": (n_embd,)})
            return shapes.get(rest)
        return {
            "token_embd.weight": (None, n_embd),
            "output_norm.weight": (n_embd,),
            "per_layer_token_embd.weight": (None, n_pl * n_layer),
            "per_layer_model_proj.weight": (n_pl * n_layer, n_embd),
            "per_layer_proj_norm.weight": (n_pl,),
        }.get(gname)

    altup: dict[str, dict[int, TensorRef]] = {"altup_proj.weight": {}, "altup_unembd_proj.weight": {}}
    used: set[str] = set()
    for text, ref in sorted(by_name.items(), key=lambda kv: _order_key(kv[0])):
        if text == "lm_head.weight":
            if cfg.get("tie_word_embeddings", ckpt.config.get("tie_word_embeddings", True)) is False:
                raise ConversionError(f"{ref.shard.path}: untied lm_head.weight is not supported for Gemma (llama.cpp ties the output to token_embd)")
            continue  # tied to token_embd
        m = re.match(r"model\.altup_(unembed_)?projections\.(\d+)\.weight$", text)
        if m and arch == "gemma3n":
            altup["altup_unembd_proj.weight" if m.group(1) else "altup_proj.weight"][int(m.group(2))] = ref
            continue
        m = re.match(r"model\.layers\.(\d+)\.(.+)$", text)
        if m:
            i = int(m.group(1))
            if i >= n_layer:
                raise ConversionError(f"{ref.shard.path}: tensor {ref.name} belongs to layer {i}, the config has {n_layer} layers")
            suffix = m.group(2)
            target = _LAYER_MAP.get(suffix)
            if arch == "gemma" and suffix == "post_attention_layernorm.weight":
                target = "ffn_norm.weight"  # Gemma 1's only pre-FFN norm
            gname = f"blk.{i}.{target}" if target else None
        else:
            gname = _GLOBAL_MAP.get(text)
        if gname is None:
            raise ConversionError(f"{ref.shard.path}: unexpected tensor {ref.name} for architecture {plan.hf_arch}")
        shape = ref.shape
        want = expected(gname)
        if want is not None:
            ok = len(want) == len(shape) and all(w is None or w == s for w, s in zip(want, shape))
            if not ok:
                shown = [("n_vocab" if w is None else w) for w in want]
                raise ConversionError(
                    f"{ref.shard.path}: tensor {ref.name} has shape {list(shape)}, config.json implies {shown}"
                )
        rows = None
        if gname in ("token_embd.weight", "per_layer_token_embd.weight"):
            rows = n_vocab
            shape = (n_vocab,) + shape[1:]
            if arch not in ("gemma3n",) and ref.shape[0] < n_vocab:
                raise ConversionError(
                    f"{ref.shard.path}: tensor {ref.name} has {ref.shape[0]} rows, the vocabulary has {n_vocab} tokens"
                )
        shift = norm_shift if gname.endswith("norm.weight") else 0.0
        if gname.endswith("layer_output_scale.weight") or gname.endswith("altup_correct_scale.weight"):
            shape = shape if shape else (1,)
        keep = len(shape) <= 1 or gname.endswith("_norm.weight") or gname.endswith(_F32_SUFFIXES)
        plan.tensors.append(PlannedTensor(gname, tuple(shape), _loader(ref, shift=shift, rows=rows), keep, (ref.name,)))
        used.add(gname)

    if arch == "gemma3n":
        n_alt = int(cfg.get("altup_num_inputs", 4))
        for gname, parts in altup.items():
            if sorted(parts) != list(range(n_alt - 1)):
                raise ConversionError(f"{ckpt.dir}: {gname} needs {n_alt - 1} AltUp projections, found {sorted(parts)}")
            refs = [parts[k] for k in range(n_alt - 1)]
            plan.tensors.append(PlannedTensor(gname, (n_alt - 1,) + refs[0].shape, _stack_loader(refs), False, tuple(r.name for r in refs)))
            used.add(gname)

    if arch == "gemma4":
        full_rope, _ = _rope(cfg)
        if full_rope.get("rope_type") == "proportional":
            hd_full = max(head_dims)
            n_rot = int(hd_full * float(full_rope.get("partial_rotary_factor", 1.0)) / 2)
            values = np.array([1.0] * n_rot + [1e30] * (hd_full // 2 - n_rot), dtype=np.float32)
            plan.tensors.append(PlannedTensor("rope_freqs.weight", values.shape, _const_loader(values), True))
            used.add("rope_freqs.weight")

    required = ["token_embd.weight", "output_norm.weight"]
    for i in range(n_layer):
        required += [f"blk.{i}.{n}" for n in ("attn_q.weight", "attn_output.weight", "attn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")]
        if arch not in ("gemma4",) or i < n_layer - n_kv_shared:
            required += [f"blk.{i}.attn_k.weight"]
        if arch != "gemma4" and arch != "gemma":
            required.append(f"blk.{i}.attn_v.weight")
    if n_pl:
        required += ["per_layer_token_embd.weight", "per_layer_model_proj.weight"]
    missing = [n for n in required if n not in used]
    if missing:
        raise ConversionError(f"{ckpt.dir}: checkpoint lacks tensors that config.json requires: {', '.join(missing[:8])}"
                              + (" ..." if len(missing) > 8 else ""))

    plan.metadata = _metadata(arch, cfg, n_layer, n_embd, n_head, n_head_kv, kv_heads, head_dims, n_ff, types, n_kv_shared, n_pl)
    return plan


def _order_key(name: str) -> tuple:
    m = re.match(r"model\.layers\.(\d+)\.", name)
    return (1, int(m.group(1)), name) if m else (0 if "embed" in name else 2, 0, name)


def _metadata(arch, cfg, n_layer, n_embd, n_head, n_head_kv, kv_heads, head_dims, n_ff, types, n_kv_shared, n_pl):
    md: list[tuple[str, str, object]] = []
    add = lambda method, value: md.append((method, "", value))  # noqa: E731
    add("add_context_length", int(cfg.get("max_position_embeddings", 8192)))
    add("add_embedding_length", n_embd)
    add("add_block_count", n_layer)
    add("add_feed_forward_length", n_ff if len(set(n_ff)) > 1 else n_ff[0])
    add("add_head_count", n_head)
    add("add_head_count_kv", kv_heads if len(set(kv_heads)) > 1 else n_head_kv)
    add("add_layer_norm_rms_eps", float(cfg.get("rms_norm_eps", 1e-6)))
    swa_dims = [d for d, t in zip(head_dims, types) if t != "full_attention"]
    full_dims = [d for d, t in zip(head_dims, types) if t == "full_attention"]
    hd_full = full_dims[0] if full_dims else head_dims[0]
    add("add_key_length", hd_full)
    add("add_value_length", hd_full)
    full_rope, swa_rope = _rope(cfg)
    if arch != "gemma" or "rope_theta" in cfg or cfg.get("rope_parameters"):
        add("add_rope_freq_base", float(full_rope.get("rope_theta", 10000.0)))
    if full_rope.get("rope_type") == "linear" and full_rope.get("factor"):
        md.append(("add_rope_scaling_type", "", "linear"))
        add("add_rope_scaling_factor", float(full_rope["factor"]))
    if arch in ("gemma3", "gemma3n", "gemma4") and swa_rope.get("rope_theta") is not None:
        add("add_rope_freq_base_swa", float(swa_rope["rope_theta"]))
    if arch == "gemma2":
        add("add_attn_logit_softcapping", float(cfg.get("attn_logit_softcapping") or 50.0))
        add("add_final_logit_softcapping", float(cfg.get("final_logit_softcapping") or 30.0))
        add("add_sliding_window", int(cfg.get("sliding_window", 4096)))
    elif arch in ("gemma3", "gemma3n", "gemma4"):
        softcap = cfg.get("final_logit_softcapping")
        if arch == "gemma4":
            # llama.cpp defaults to 30 when the key is absent; 0 turns soft-capping off
            add("add_final_logit_softcapping", float(softcap or 0.0))
        elif softcap:
            add("add_final_logit_softcapping", float(softcap))
        if cfg.get("sliding_window"):
            add("add_sliding_window", int(cfg["sliding_window"]))
        add("add_sliding_window_pattern", [t == "sliding_attention" for t in types])
    if arch == "gemma3n":
        add("add_altup_active_idx", int(cfg.get("altup_active_idx", 0)))
        add("add_altup_num_inputs", int(cfg.get("altup_num_inputs", 4)))
        add("add_embedding_length_per_layer_input", n_pl)
        add("add_shared_kv_layers", n_kv_shared)
        add("add_activation_sparsity_scale", _sparsity_scale(cfg.get("activation_sparsity_pattern") or [0.0] * n_layer, n_layer))
    if arch == "gemma4":
        add("add_shared_kv_layers", n_kv_shared)
        add("add_embedding_length_per_layer_input", n_pl)
        hd_swa = swa_dims[0] if swa_dims else head_dims[0]
        add("add_key_length_swa", hd_swa)
        add("add_value_length_swa", hd_swa)
        add("add_rope_dimension_count", hd_full)
        add("add_rope_dimension_count_swa", int(hd_swa * float(swa_rope.get("partial_rotary_factor", 1.0))))
    return md


def _sparsity_scale(pattern, n_layer: int) -> list[float]:
    if isinstance(pattern, (int, float)):
        pattern = [float(pattern)] * n_layer
    out = []
    for s in pattern:
        s = float(s)
        # icdf(0) is -inf (torch's value, as llama.cpp's converter writes); 0 < s < 1 otherwise
        out.append(float("-inf") if s <= 0.0 else statistics.NormalDist().inv_cdf(s))
    return out
