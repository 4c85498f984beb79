"""GGUF -> Hugging Face checkpoint folder (float32 safetensors, config.json, tokenizer files).

Weights are dequantized with gguf-py and streamed to one safetensors file;
the tokenizer is rebuilt from the GGUF vocabulary (tokenizer.model for
SentencePiece vocabularies, tokenizer.json for BPE ones).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

import gguf

from edge_runtime.conversion.gemma import _GLOBAL_MAP, _LAYER_MAP
from edge_runtime.conversion.tokenizer import CONTROL, USER_DEFINED, Vocab, write_sentencepiece
from edge_runtime.conversion.writer import (
    atomic_path, check_free_space, check_writable, nearest_existing, progress_bar,
    staged_folder,
)
from edge_runtime.errors import ConversionError, EdgeRuntimeError
from edge_runtime.gguf_file import read_header

_HF_ARCH = {"gemma": ("GemmaForCausalLM", "gemma"), "gemma2": ("Gemma2ForCausalLM", "gemma2"),
            "gemma3": ("Gemma3ForCausalLM", "gemma3_text"), "gemma4": ("Gemma4ForCausalLM", "gemma4_text")}
_NORM_SHIFT = {"gemma": 1.0, "gemma2": 1.0, "gemma3": 1.0, "gemma4": 0.0}


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    return value


def _reverse_names(arch: str) -> dict[str, str]:
    rev = {v: k for k, v in _GLOBAL_MAP.items()}
    layer = {v: k for k, v in _LAYER_MAP.items()}
    if arch == "gemma":
        layer["ffn_norm.weight"] = "post_attention_layernorm.weight"
    rev.update({f"blk.*.{k}": v for k, v in layer.items()})
    return rev


def _hf_name(name: str, rev: dict[str, str]) -> str | None:
    if name in rev:
        return rev[name]
    parts = name.split(".", 2)
    if parts[0] == "blk" and len(parts) == 3:
        suffix = rev.get(f"blk.*.{parts[2]}")
        if suffix:
            return f"model.layers.{parts[1]}.{suffix}"
    return None


def _config(reader: gguf.GGUFReader, arch: str, n_vocab: int, special: dict[str, int]) -> dict:
    g = lambda key, default=None: _field(reader, f"{arch}.{key}", default)  # noqa: E731
    n_layer = int(g("block_count"))
    n_embd = int(g("embedding_length"))
    n_head = int(g("attention.head_count"))
    n_head_kv = g("attention.head_count_kv", n_head)
    head_dim = int(g("attention.key_length", n_embd // n_head))
    hf_arch, model_type = _HF_ARCH[arch]
    cfg = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "vocab_size": n_vocab,
        "hidden_size": n_embd,
        "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": int(n_head_kv),
        "head_dim": head_dim,
        "max_position_embeddings": int(g("context_length", 8192)),
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "bos_token_id": special.get("bos", 2),
        "eos_token_id": special.get("eos", 1),
        "pad_token_id": special.get("pad", 0),
        "attention_bias": False,
    }
    theta = float(g("rope.freq_base", 10000.0))
    if arch == "gemma":
        cfg["rope_theta"] = theta
    if arch == "gemma2":
        cfg.update(rope_theta=theta, query_pre_attn_scalar=head_dim, sliding_window=int(g("attention.sliding_window", 4096)),
                   attn_logit_softcapping=float(g("attn_logit_softcapping", 50.0)),
                   final_logit_softcapping=float(g("final_logit_softcapping", 30.0)))
    if arch == "gemma3":
        pattern = g("attention.sliding_window_pattern")
        if isinstance(pattern, list):
            types = ["sliding_attention" if p else "full_attention" for p in pattern]
        else:
            n = int(pattern or 6)
            types = ["full_attention" if (i + 1) % n == 0 else "sliding_attention" for i in range(n_layer)]
        theta_swa = float(g("rope.freq_base_swa", 10000.0))
        full_rope = {"rope_type": "default", "rope_theta": theta}
        if g("rope.scaling.type") == "linear" or g("rope.scaling.factor"):
            full_rope = {"rope_type": "linear", "rope_theta": theta, "factor": float(g("rope.scaling.factor"))}
        cfg.update(
            query_pre_attn_scalar=head_dim,
            sliding_window=int(g("attention.sliding_window", 512)),
            layer_types=types,
            rope_parameters={"full_attention": full_rope, "sliding_attention": {"rope_type": "default", "rope_theta": theta_swa}},
            final_logit_softcapping=g("final_logit_softcapping"),
            attn_logit_softcapping=None,
            use_bidirectional_attention=False,
        )
    if arch == "gemma4":
        pattern = list(g("attention.sliding_window_pattern"))
        types = ["sliding_attention" if p else "full_attention" for p in pattern]
        hd_swa = int(g("attention.key_length_swa", head_dim))
        n_rot_full = rope_rotated_pairs(reader)
        ff = g("feed_forward_length")
        n_shared = int(g("attention.shared_kv_layers", 0))
        kv = n_head_kv if isinstance(n_head_kv, list) else [int(n_head_kv)] * n_layer
        kv_swa = next((k for k, t in zip(kv, types) if t == "sliding_attention"), kv[0])
        kv_full = next((k for k, t in zip(kv, types) if t == "full_attention"), kv_swa)
        cfg.update(
            head_dim=hd_swa,
            global_head_dim=head_dim,
            num_key_value_heads=int(kv_swa),
            intermediate_size=int(ff[0] if isinstance(ff, list) else ff),
            use_double_wide_mlp=isinstance(ff, list) and len(set(ff)) > 1,
            layer_types=types,
            sliding_window=int(g("attention.sliding_window", 512)),
            num_kv_shared_layers=n_shared,
            hidden_size_per_layer_input=int(g("embedding_length_per_layer_input", 0)),
            vocab_size_per_layer_input=n_vocab,
            final_logit_softcapping=float(g("final_logit_softcapping")) or None,
            rope_parameters={
                "full_attention": {"rope_type": "proportional", "rope_theta": theta,
                                   "partial_rotary_factor": 2 * n_rot_full / head_dim if n_rot_full else 1.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": float(g("rope.freq_base_swa", 10000.0))},
            },
        )
        if kv_full != kv_swa:
            cfg["num_global_key_value_heads"] = int(kv_full)
    return cfg


def rope_rotated_pairs(reader: gguf.GGUFReader) -> int:
    """Rotated dimension pairs of Gemma 4's proportional RoPE (the 1.0 entries of rope_freqs)."""
    t = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    return 0 if t is None else int((np.asarray(t.data) < 1e29).sum())


def _vocab(reader: gguf.GGUFReader, path: Path) -> Vocab:
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise ConversionError(f"{path}: no tokenizer.ggml.tokens (no vocabulary to rebuild)")
    n = len(tokens)
    scores = _field(reader, "tokenizer.ggml.scores") or [0.0] * n
    types = _field(reader, "tokenizer.ggml.token_type") or [1] * n
    vocab = Vocab(str(_field(reader, "tokenizer.ggml.model", "llama")), list(tokens), [float(s) for s in scores],
                  [int(t) for t in types], path, merges=list(_field(reader, "tokenizer.ggml.merges") or []))
    for key, gkey in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        value = _field(reader, f"tokenizer.ggml.{gkey}_token_id")
        if value is not None:
            vocab.special_ids[key] = int(value)
    vocab.add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", True))
    vocab.add_eos = bool(_field(reader, "tokenizer.ggml.add_eos_token", False))
    vocab.chat_template = _field(reader, "tokenizer.chat_template")
    return vocab


def _write_tokenizer(out_dir: Path, vocab: Vocab) -> None:
    names = {k: vocab.tokens[i] for k, i in vocab.special_ids.items() if 0 <= i < len(vocab.tokens)}
    # Hugging Face spells spaces in added tokens as U+2581, as SentencePiece does
    decoder = {
        str(i): {"content": t.replace(" ", "\u2581") if ty == USER_DEFINED else t, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": ty == CONTROL}
        for i, (t, ty) in enumerate(zip(vocab.tokens, vocab.types)) if ty in (CONTROL, USER_DEFINED)
    }
    tok_config = {
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": vocab.add_bos,
        "add_eos_token": vocab.add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000,
        "spaces_between_special_tokens": False,
        **{f"{k}_token": v for k, v in names.items()},
        "added_tokens_decoder": decoder,
    }
    if vocab.chat_template:
        tok_config["chat_template"] = vocab.chat_template
    if vocab.model == "llama":
        write_sentencepiece(out_dir / "tokenizer.model", vocab)
    else:
        _write_bpe_json(out_dir / "tokenizer.json", vocab)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False), encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps({f"{k}_token": v for k, v in names.items()}, indent=2), encoding="utf-8")


def _write_bpe_json(path: Path, vocab: Vocab) -> None:
    """A byte-fallback BPE tokenizer.json in the style of Gemma's."""
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": ty == CONTROL} for i, (t, ty) in enumerate(zip(vocab.tokens, vocab.types)) if ty in (CONTROL, USER_DEFINED)]
    data = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<bos>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<bos>": {"id": "<bos>", "ids": [vocab.special_ids.get("bos", 2)], "tokens": ["<bos>"]}}},
        "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                                    {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(vocab.tokens)}, "merges": [m.split(" ", 1) for m in vocab.merges]},
    }
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _write_safetensors(path: Path, entries: list[tuple[str, tuple[int, ...], callable]], progress: bool = True) -> None:
    """Stream float32 tensors into one safetensors file."""
    header, offset = {}, 0
    for name, shape, _ in entries:
        n = int(np.prod(shape, dtype=np.int64)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f, progress_bar(offset, path.name, progress) as bar:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, load in entries:
            data = np.ascontiguousarray(load(), dtype=np.float32)
            if tuple(data.shape) != tuple(shape):
                raise ConversionError(f"{name}: dequantized shape {list(data.shape)} differs from {list(shape)}")
            f.write(data.data)
            if bar is not None:
                bar.update(data.nbytes)


def unpack_gguf(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """Write a Hugging Face checkpoint (config.json, model.safetensors in f32, tokenizer files) from a GGUF.

    The folder is checked (writable, enough space) before any work; the files are written
    into a staging folder next to it and moved in at the end, so a failure leaves nothing.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise ConversionError(f"{gguf_path}: no such GGUF file")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError(f"{out_dir} is a file; give a folder to unpack into")
    parent = nearest_existing(out_dir)
    check_writable(parent)
    try:  # our header reader is fast: the space check comes before gguf-py parses the whole file
        header = read_header(gguf_path)
    except EdgeRuntimeError as exc:
        raise ConversionError(str(exc)) from None
    f32_bytes = sum(int(np.prod(t.shape, dtype=np.int64)) * 4 for t in header.tensors)
    check_free_space(parent, f32_bytes + 64 * 2**20, "model.safetensors")
    try:
        reader = gguf.GGUFReader(gguf_path)
    except Exception as exc:  # gguf-py raises assorted errors on bad files
        raise ConversionError(f"{gguf_path}: not a readable GGUF file ({exc})") from None
    arch = str(_field(reader, "general.architecture", ""))
    if arch not in _HF_ARCH:
        raise ConversionError(f"{gguf_path}: unpacking architecture {arch!r} is not supported (supported: {', '.join(_HF_ARCH)})")
    rev = _reverse_names(arch)
    shift = _NORM_SHIFT[arch]
    entries = []
    for t in reader.tensors:
        hf = _hf_name(t.name, rev)
        if hf is None:
            if t.name in ("output.weight", "rope_freqs.weight"):
                continue
            raise ConversionError(f"{gguf_path}: tensor {t.name} has no Hugging Face counterpart")
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))

        def load(t=t, shape=shape, name=t.name):
            data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
            if shift and name.endswith("norm.weight"):
                data = data - np.float32(shift)
            return data

        entries.append((hf, shape, load))
    vocab = _vocab(reader, gguf_path)
    n_vocab = next((s[0] for n, s, _ in entries if n == "model.embed_tokens.weight"), len(vocab))
    config = _config(reader, arch, int(n_vocab), vocab.special_ids)
    with staged_folder(out_dir) as staging:
        _write_safetensors(staging / "model.safetensors", entries, progress)
        (staging / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        (staging / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
             "pad_token_id": config["pad_token_id"]}, indent=2), encoding="utf-8")
        _write_tokenizer(staging, vocab)
    return out_dir
