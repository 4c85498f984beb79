"""Converter, Gemma 3: the real 270M round trip (GGUF -> unpack -> convert) and a tiny random model.

Tolerances (rel = max |logit difference| / max |reference logit|, KL = mean KL(reference || GGUF)):
  f32  rel < 2e-3 and the same top-1 token at every position
  f16  rel < 5e-3 and the same top-1 token at every position
  bf16 rel < 2e-2, KL < 1e-3;  q8_0 rel < 6e-2, KL < 5e-3;  Q4_K_M KL < 0.05
"""

from __future__ import annotations

import _thread
import json
import threading
import time

import numpy as np
import pytest

from convert_support import (
    check, compare, converted, gguf_logits, hf_logits, real_gemma_checkpoint, reference_tokens, tiny_checkpoint,
)

@pytest.fixture(scope="module")
def real_ckpt(tmp_path_factory):
    return real_gemma_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return reference_tokens(tmp_path_factory)


@pytest.fixture(scope="module")
def real_reference(real_ckpt, tokens):
    return hf_logits(real_ckpt, tokens)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory, "gemma3")


@pytest.fixture(scope="module")
def tiny_reference(tiny, tokens):
    return hf_logits(tiny, tokens)


# --------------------------------------------------------------------------- real 270M


def test_unpacked_checkpoint_matches_original_gguf(real_reference, tokens, default_model_path):
    """transformers on our unpacked checkpoint agrees with llama.cpp on the original Q4_K_M GGUF (same weights)."""
    stats = compare(real_reference, gguf_logits(default_model_path, tokens))
    # the original is Q4_K_M: only quantization noise separates them
    assert stats["kl"] < 0.15 and stats["top1"] >= 0.85, stats


def test_real_270m_f32_matches_transformers(tmp_path_factory, real_ckpt, real_reference, tokens, default_model_path):
    out = converted(tmp_path_factory, real_ckpt, "f32")
    stats = compare(real_reference, gguf_logits(out, tokens))
    check(stats, "f32")
    original = compare(gguf_logits(default_model_path, tokens), gguf_logits(out, tokens))
    assert original["kl"] < 0.15, original


def test_real_270m_vocabulary_identical_to_original(tmp_path_factory, real_ckpt, default_model_path):
    from gguf import GGUFReader

    out = converted(tmp_path_factory, real_ckpt, "f32")
    a, b = GGUFReader(default_model_path), GGUFReader(out)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix", "gemma3.attention.sliding_window",
                "gemma3.rope.freq_base", "gemma3.context_length", "gemma3.attention.head_count_kv"):
        assert a.fields[key].contents() == b.fields[key].contents(), key
    assert np.array_equal(a.fields["tokenizer.ggml.scores"].contents(), b.fields["tokenizer.ggml.scores"].contents())


def test_real_270m_tokenizes_like_original(tmp_path_factory, real_ckpt, default_model_path):
    from edge_runtime.backend.core import LlamaModel
    from edge_runtime.conversion.verify import SAMPLE_TEXTS

    out = converted(tmp_path_factory, real_ckpt, "q8_0")
    with LlamaModel.load(default_model_path, vocab_only=True) as a, LlamaModel.load(out, vocab_only=True) as b:
        for text in SAMPLE_TEXTS + ("<start_of_turn>user\nhi<end_of_turn>\n",):
            assert a.tokenize(text) == b.tokenize(text), text


def test_real_270m_q4_k_m_same_type_plan_as_original(tmp_path_factory, real_ckpt, real_reference, tokens, default_model_path):
    from gguf import GGUFReader

    out = converted(tmp_path_factory, real_ckpt, "Q4_K_M")
    ours = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    original = {t.name: t.tensor_type.name for t in GGUFReader(default_model_path).tensors}
    assert ours == original
    check(compare(real_reference, gguf_logits(out, tokens)), "Q4_K_M")


def test_verify_reports_tokenizer_agreement_and_perplexity(tmp_path, real_ckpt):
    from edge_runtime.conversion import convert_checkpoint

    result = convert_checkpoint(real_ckpt, tmp_path / "m.gguf", "q8_0", verify=True, progress=False)
    v = result.verification
    assert v["ok"] and v["tokenizer"]["ok"] and v["tokenizer"]["texts"] >= 8
    assert 1.0 < v["perplexity"] < 50.0, v["perplexity"]
    manifest = json.loads((tmp_path / "m.gguf.json").read_text())
    assert manifest["verification"]["perplexity"] == pytest.approx(v["perplexity"])
    assert manifest["tokenizer"]["checks"]["agrees_with_hf"] is True


def test_interrupted_conversion_leaves_no_file(tmp_path, real_ckpt):
    """Ctrl-C (a real KeyboardInterrupt in the converting thread) while the GGUF is being written."""
    from edge_runtime.conversion import convert_checkpoint

    out = tmp_path / "model.gguf"
    stop = threading.Event()

    def interrupt_when_writing():
        while not stop.is_set():
            if any(p.name.startswith(".model.gguf") for p in tmp_path.iterdir()):
                _thread.interrupt_main()
                return
            time.sleep(0.001)

    watcher = threading.Thread(target=interrupt_when_writing, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        try:
            convert_checkpoint(real_ckpt, out, "f32", progress=False)
        finally:
            stop.set()
            watcher.join()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- tiny random Gemma 3


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0", "Q4_K_M"])
def test_tiny_gemma3_logits(tmp_path_factory, tiny, tiny_reference, tokens, outtype):
    out = converted(tmp_path_factory, tiny, outtype)
    check(compare(tiny_reference, gguf_logits(out, tokens)), outtype)


def test_q8_0_bit_exact_with_ggml(tmp_path_factory, tiny):
    """Our Q8_0 tensors are byte for byte what llama.cpp's quantizer makes from the f32 file."""
    from gguf import GGUFReader

    from edge_runtime.backend.quantize import quantize_model

    f32 = converted(tmp_path_factory, tiny, "f32")
    ours = converted(tmp_path_factory, tiny, "q8_0")
    theirs = ours.parent / "llama-q8_0.gguf"
    quantize_model(f32, theirs, 7)  # LLAMA_FTYPE_MOSTLY_Q8_0
    a = {t.name: t for t in GGUFReader(ours).tensors}
    b = {t.name: t for t in GGUFReader(theirs).tensors}
    for name, t in a.items():
        if t.tensor_type.name == "Q8_0":
            assert b[name].tensor_type.name == "Q8_0"
            assert np.array_equal(np.asarray(t.data), np.asarray(b[name].data)), name


def test_bf16_checkpoint_passes_through_bit_exact(tmp_path_factory):
    """bf16 weights are copied, not rounded through f32, when the output is bf16."""
    from gguf import GGUFReader

    ckpt = tiny_checkpoint(tmp_path_factory, "gemma3", dtype="bfloat16")
    out = converted(tmp_path_factory, ckpt, "bf16")
    tensors = {t.name: t for t in GGUFReader(out).tensors}
    from edge_runtime.conversion.checkpoint import Checkpoint

    with Checkpoint(ckpt) as c:
        raw = c.tensors["model.layers.0.mlp.down_proj.weight"].raw()
        assert np.array_equal(np.asarray(tensors["blk.0.ffn_down.weight"].data).view(np.uint16).reshape(raw.shape), raw)


def test_manifest(tmp_path_factory, tiny):
    from edge_runtime.conversion.writer import sha256_file

    out = converted(tmp_path_factory, tiny, "q8_0")
    manifest = json.loads(out.with_name(out.name + ".json").read_text())
    assert manifest["sha256"] == sha256_file(out)
    assert manifest["size_bytes"] == out.stat().st_size
    assert manifest["quantization"] == "q8_0" and manifest["architecture"] == "gemma3"
    assert manifest["source"]["path"] == str(tiny)
    assert manifest["tokenizer"]["n_tokens"] == 262144 and manifest["tokenizer"]["model"] == "llama"
