"""Shared helpers for the converter tests: tiny random Gemma checkpoints made with
transformers, the real Gemma vocabulary (unpacked from the real 270M GGUF), and
numeric references (transformers forward passes, llama.cpp logits).

Builders cache their output under pytest's session base temp folder, so every
test module of one session reuses the same checkpoints and GGUF files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

# Token sequence used for logits comparisons: the real Gemma tokenizer's ids of this text.
REFERENCE_TEXT = "The capital of France is Paris. 日本語 and emoji 🎉: 1234 + 5678 =\n  indented"

TINY_COMMON = dict(
    vocab_size=262144,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    bos_token_id=2,
    eos_token_id=1,
    pad_token_id=0,
    tie_word_embeddings=True,
)


def cache_dir(tmp_path_factory, name: str) -> tuple[Path, bool]:
    """(folder, already built) for a named artifact shared by the whole session."""
    path = tmp_path_factory.getbasetemp() / "convert-cache" / name
    done = path / ".done"
    return path, done.exists()


def mark_done(path: Path) -> None:
    (path / ".done").write_text("ok")


def real_gemma_checkpoint(tmp_path_factory) -> Path:
    """The real Gemma 3 270M (Q4_K_M GGUF) unpacked by our own unpack to an f32 HF checkpoint."""
    from edge_runtime.conversion import unpack_gguf
    from edge_runtime.default_model import default_model_path

    path, done = cache_dir(tmp_path_factory, "gemma3-270m-unpacked")
    if not done:
        unpack_gguf(default_model_path(), path)
        mark_done(path)
    return path


def real_tokenizer_json(tmp_path_factory) -> Path:
    """tokenizer.json of the real Gemma vocabulary (transformers converts the unpacked tokenizer.model)."""
    import transformers

    path, done = cache_dir(tmp_path_factory, "gemma-tokenizer-json")
    if not done:
        tok = transformers.AutoTokenizer.from_pretrained(real_gemma_checkpoint(tmp_path_factory))
        tok.save_pretrained(path)
        mark_done(path)
    return path / "tokenizer.json"


def reference_tokens(tmp_path_factory) -> list[int]:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(real_gemma_checkpoint(tmp_path_factory) / "tokenizer.model"))
    return [2] + sp.encode(REFERENCE_TEXT)


def _randomize(model, seed: int) -> None:
    """Weights large enough that logits are spread out, and non-trivial norm weights (so the +1 offset matters)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() <= 1 or "norm" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif "altup" in name and "coef" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p.shape[-1] ** 0.5))


def tiny_checkpoint(tmp_path_factory, kind: str, *, dtype: str = "float32", seed: int = 0, **overrides) -> Path:
    """A tiny random checkpoint of `kind` (gemma, gemma2, gemma3, gemma3n, gemma4) with the real Gemma vocabulary."""
    import torch
    import transformers

    name = f"tiny-{kind}-{dtype}-{seed}-" + "-".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    path, done = cache_dir(tmp_path_factory, name.replace("/", "_")[:120])
    if done:
        return path
    vocab_dir = real_gemma_checkpoint(tmp_path_factory)
    params = dict(TINY_COMMON)
    if kind == "gemma":
        cfg_cls, model_cls = transformers.GemmaConfig, transformers.GemmaForCausalLM
        params.update(hidden_activation="gelu_pytorch_tanh")
    elif kind == "gemma2":
        cfg_cls, model_cls = transformers.Gemma2Config, transformers.Gemma2ForCausalLM
        params.update(sliding_window=8, query_pre_attn_scalar=32, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    elif kind == "gemma3":
        cfg_cls, model_cls = transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM
        params.update(sliding_window=8, query_pre_attn_scalar=32,
                      layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"])
    elif kind == "gemma3n":
        cfg_cls, model_cls = transformers.Gemma3nTextConfig, transformers.Gemma3nForCausalLM
        # llama.cpp hard-codes laurel rank 64, sparsity on the first 10 layers (0.95) and KV sharing from layer 20
        # ... and the per-layer embedding width (256), so keep this one at 2 layers
        n = params["num_hidden_layers"] = 2
        params.update(vocab_size=262400, vocab_size_per_layer_input=262144, hidden_size_per_layer_input=256,
                      laurel_rank=64, altup_num_inputs=4, num_kv_shared_layers=0, sliding_window=8,
                      activation_sparsity_pattern=[0.95] * n,
                      layer_types=["sliding_attention", "full_attention"] * (n // 2))
    elif kind == "gemma4":
        cfg_cls, model_cls = transformers.Gemma4TextConfig, transformers.Gemma4ForCausalLM
        params.update(vocab_size_per_layer_input=262144, hidden_size_per_layer_input=16, sliding_window=8,
                      num_kv_shared_layers=0, global_head_dim=64,
                      layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
    else:
        raise ValueError(kind)
    params.update(overrides)
    config = cfg_cls(**params)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    _randomize(model, seed)
    model = model.to(getattr(torch, dtype))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    if kind == "gemma4":
        shutil.copy(real_tokenizer_json(tmp_path_factory), path / "tokenizer.json")
        tok_cfg = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True}
        (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    else:
        for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(vocab_dir / f, path / f)
    mark_done(path)
    return path


def hf_logits(checkpoint: Path, tokens: list[int]) -> np.ndarray:
    """transformers' logits (float32 compute, eager attention) for `tokens`: [n_tokens, n_vocab]."""
    import torch
    import transformers

    torch.set_num_threads(2)
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([tokens])).logits[0].float().numpy()
    del model
    return out


def gguf_logits(path: Path, tokens: list[int]) -> np.ndarray:
    from edge_runtime.backend.core import ContextParams, LlamaContext, LlamaModel

    with LlamaModel.load(path) as model:
        params = ContextParams(n_ctx=256, n_batch=256, n_ubatch=256, n_threads=2, n_threads_batch=2, logits_all=True)
        with LlamaContext(model, params) as ctx:
            return ctx.eval_logits(tokens)


def converted(tmp_path_factory, checkpoint: Path, outtype: str) -> Path:
    """`checkpoint` converted to `outtype`, cached for the session."""
    from edge_runtime.conversion import convert_checkpoint

    path, done = cache_dir(tmp_path_factory, f"gguf-{checkpoint.name}-{outtype}")
    out = path / "model.gguf"
    if not done:
        path.mkdir(parents=True, exist_ok=True)
        convert_checkpoint(checkpoint, out, outtype, progress=False)
        mark_done(path)
    return out


def kl_divergence(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """KL(ref || other) per position, from logits."""
    def log_softmax(x):
        x = x.astype(np.float64)
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(other)
    return (np.exp(lp) * (lp - lq)).sum(axis=1)


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    """Max abs error (relative to the largest |logit|), top-1 agreement, mean KL."""
    assert ref.shape == got.shape, (ref.shape, got.shape)
    scale = float(np.abs(ref).max())
    return {
        "max_abs": float(np.abs(ref - got).max()),
        "rel": float(np.abs(ref - got).max() / scale),
        "top1": float((ref.argmax(1) == got.argmax(1)).mean()),
        "kl": float(kl_divergence(ref, got).mean()),
    }


# Tolerances per output type, shared by all architectures (see the test modules' docstrings)
TOLERANCES = {
    "f32": dict(rel=2e-3, top1=1.0),
    "f16": dict(rel=5e-3, top1=1.0),
    "bf16": dict(rel=2e-2, kl=1e-3),
    "q8_0": dict(rel=6e-2, kl=5e-3),
    "Q4_K_M": dict(kl=0.05),
}


def check(stats: dict, outtype: str) -> None:
    tol = TOLERANCES[outtype]
    if "rel" in tol:
        assert stats["rel"] < tol["rel"], stats
    if "top1" in tol:
        assert stats["top1"] == tol["top1"], stats
    if "kl" in tol:
        assert stats["kl"] < tol["kl"], stats


def tiny_gemma3_vision_checkpoint(tmp_path_factory, *, tokens_per_image: int = 16, max_positions: int = 256) -> Path:
    """A tiny random Gemma3ForConditionalGeneration: the tiny Gemma 3 text model plus a 2-layer SigLIP
    tower on 64x64 images with 4x4 patches (a 16x16 grid pooled to `tokens_per_image` tokens)."""
    import torch
    import transformers

    suffix = "" if max_positions == 256 else f"-ctx{max_positions}"
    path, done = cache_dir(tmp_path_factory, f"tiny-gemma3-vision-{tokens_per_image}{suffix}")
    if done:
        return path
    text_src = tiny_checkpoint(tmp_path_factory, "gemma3")
    text = {k: v for k, v in json.loads((text_src / "config.json").read_text()).items()
            if k not in ("architectures", "model_type", "transformers_version", "dtype", "torch_dtype")}
    text["max_position_embeddings"] = max_positions
    vision = transformers.SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=64, patch_size=4, layer_norm_eps=1e-6)
    config = transformers.Gemma3Config(text_config=transformers.Gemma3TextConfig(**text), vision_config=vision,
                                       mm_tokens_per_image=tokens_per_image, image_token_index=262144)
    torch.manual_seed(0)
    model = transformers.Gemma3ForConditionalGeneration(config).eval()
    _randomize(model, 0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(text_src / f, path / f)
    mark_done(path)
    return path


def hf_image_features(checkpoint: Path, rgb: np.ndarray) -> np.ndarray:
    """transformers' projected image embeddings for a [H, W, 3] uint8 image already at the tower's size."""
    import torch
    import transformers

    model = transformers.Gemma3ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    pixels = torch.tensor((rgb.astype(np.float32) / 255 - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    out = getattr(out, "pooler_output", out)
    return out.reshape(-1, out.shape[-1]).float().numpy()


def copy_with_metadata(src: Path, dst: Path, changes: dict[str, int]) -> Path:
    """A copy of a GGUF with some integer metadata values changed in place."""
    import gguf

    shutil.copyfile(src, dst)
    reader = gguf.GGUFReader(dst, "r+")
    for key, value in changes.items():
        field = reader.fields[key]
        field.parts[field.data[0]][0] = value
    reader.data.flush()
    del reader
    return dst
