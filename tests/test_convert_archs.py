"""Converter, Gemma 1, 2, 3n and 4: tiny random checkpoints (transformers) with the real Gemma vocabulary.

Same tolerances as tests/test_convert_gemma3.py (rel = max |logit diff| / max |reference logit|):
  f32 rel < 2e-3 and the same top-1 token everywhere; f16 rel < 5e-3 and the same top-1;
  bf16 rel < 2e-2, KL < 1e-3; q8_0 rel < 6e-2, KL < 5e-3; Q4_K_M KL < 0.05.
"""

from __future__ import annotations

import json

import pytest

from convert_support import check, compare, converted, gguf_logits, hf_logits, reference_tokens, tiny_checkpoint

# (kind, checkpoint options, output types). Gemma 3n is stored in bf16: llama.cpp fixes its per-layer
# embedding width at 256, which makes even a 2-layer model's per-layer table 262400 x 512.
CASES = [
    ("gemma", {}, ["f32", "f16", "bf16", "q8_0", "Q4_K_M"]),
    ("gemma2", {}, ["f32", "f16", "bf16", "q8_0", "Q4_K_M"]),
    ("gemma3n", {"dtype": "bfloat16"}, ["f32", "q8_0", "Q4_K_M"]),
    ("gemma4", {}, ["f32", "f16", "bf16", "q8_0", "Q4_K_M"]),
    ("gemma4", {"num_kv_shared_layers": 2, "use_double_wide_mlp": True}, ["f32"]),
    ("gemma4", {"hidden_size_per_layer_input": 0, "final_logit_softcapping": 30.0}, ["f32", "q8_0"]),
]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return reference_tokens(tmp_path_factory)


_refs: dict = {}


def reference(tmp_path_factory, tokens, kind, options):
    key = (kind, tuple(sorted(options.items())))
    if key not in _refs:
        ckpt = tiny_checkpoint(tmp_path_factory, kind, **options)
        _refs[key] = (ckpt, hf_logits(ckpt, tokens))
    return _refs[key]


@pytest.mark.parametrize(
    "kind,options,outtype",
    [(k, o, t) for k, o, types in CASES for t in types],
    ids=[f"{k}{'-' + '-'.join(f'{a}={b}' for a, b in o.items()) if o else ''}-{t}" for k, o, types in CASES for t in types],
)
def test_tiny_logits(tmp_path_factory, tokens, kind, options, outtype):
    ckpt, ref = reference(tmp_path_factory, tokens, kind, options)
    out = converted(tmp_path_factory, ckpt, outtype)
    check(compare(ref, gguf_logits(out, tokens)), outtype)


def test_gemma3n_layout(tmp_path_factory):
    """Vocabulary padded to 262400, AltUp projections stacked, activation sparsity scale from the inverse normal CDF."""
    from gguf import GGUFReader

    ckpt = tiny_checkpoint(tmp_path_factory, "gemma3n", dtype="bfloat16")
    r = GGUFReader(converted(tmp_path_factory, ckpt, "f32"))
    tensors = {t.name: t for t in r.tensors}
    assert list(tensors["token_embd.weight"].shape) == [64, 262400]
    assert list(tensors["per_layer_token_embd.weight"].shape) == [512, 262400]
    assert list(tensors["altup_proj.weight"].shape) == [64, 64, 3]
    assert list(tensors["altup_unembd_proj.weight"].shape) == [64, 64, 3]
    assert r.fields["gemma3n.activation_sparsity_scale"].contents() == pytest.approx([1.6448533535003662] * 2)
    assert len(r.fields["tokenizer.ggml.tokens"].contents()) == 262400


def test_gemma4_vocabulary_and_rope_freqs(tmp_path_factory):
    """Gemma 4: BPE vocabulary from tokenizer.json (merges, 'gemma4' model), proportional RoPE factors."""
    from gguf import GGUFReader

    from edge_runtime.conversion.verify import check_tokenizer

    ckpt = tiny_checkpoint(tmp_path_factory, "gemma4")
    out = converted(tmp_path_factory, ckpt, "f32")
    r = GGUFReader(out)
    assert r.fields["tokenizer.ggml.model"].contents() == "gemma4"
    assert len(r.fields["tokenizer.ggml.merges"].contents()) > 100_000
    rope = next(t for t in r.tensors if t.name == "rope_freqs.weight")
    assert list(rope.data[:8]) == [1.0] * 8 and rope.data[8] > 1e29  # 64 * 0.25 / 2 rotated pairs
    assert r.fields["gemma4.attention.key_length"].contents() == 64
    assert r.fields["gemma4.attention.key_length_swa"].contents() == 32
    check = check_tokenizer(out, ckpt)
    assert check is not None and check.reference.startswith("tokenizer.json") and check.ok, check.mismatches


def test_gemma4_without_sliding_layers_is_refused(tmp_path, tmp_path_factory):
    """llama.cpp aborts on such a model: the converter refuses it with a message instead."""
    import shutil

    from edge_runtime.conversion import convert_checkpoint
    from edge_runtime.errors import ConversionError

    src = tiny_checkpoint(tmp_path_factory, "gemma4")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["layer_types"] = ["full_attention"] * cfg["num_hidden_layers"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="without any sliding_attention layer"):
        convert_checkpoint(ckpt, tmp_path / "o.gguf", "f32", progress=False)


def test_gemma3_with_only_tokenizer_json(tmp_path, tmp_path_factory):
    """Without tokenizer.model the vocabulary comes from tokenizer.json (BPE with merges) and tokenizes alike."""
    import shutil

    from convert_support import real_tokenizer_json

    from edge_runtime.conversion import convert_checkpoint
    from edge_runtime.conversion.verify import check_tokenizer

    src = tiny_checkpoint(tmp_path_factory, "gemma3")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in src.iterdir():
        if f.name not in ("tokenizer.model", ".done"):
            (ckpt / f.name).symlink_to(f)
    shutil.copy(real_tokenizer_json(tmp_path_factory), ckpt / "tokenizer.json")
    result = convert_checkpoint(ckpt, tmp_path / "o.gguf", "f32", progress=False)
    assert result.manifest["tokenizer"]["source"] == "tokenizer.json"
    check = check_tokenizer(result.path, ckpt)
    assert check is not None and check.ok, check.mismatches
    tokens = reference_tokens(tmp_path_factory)
    check_stats = compare(hf_logits(src, tokens), gguf_logits(result.path, tokens))
    assert check_stats["rel"] < 2e-3 and check_stats["top1"] == 1.0, check_stats


@pytest.mark.parametrize("where", ["chat_template.jinja", "tokenizer_config.json"])
def test_chat_template_is_carried_into_the_gguf_and_used(tmp_path, tmp_path_factory, where):
    """The checkpoint's chat template lands in tokenizer.chat_template; the runtime then renders with it."""
    from conftest import DATA
    from gguf import GGUFReader

    from edge_runtime import load_model
    from edge_runtime.chat_format import GemmaFormat, JinjaFormat, Message
    from edge_runtime.conversion import convert_checkpoint

    template = (DATA / "google-gemma-2-2b-it.jinja").read_text()
    src = tiny_checkpoint(tmp_path_factory, "gemma3")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in src.iterdir():
        if f.name not in (".done", "tokenizer_config.json", "chat_template.jinja", "chat_template.json"):
            (ckpt / f.name).symlink_to(f)
    tok_config = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").is_file() else {}
    if where == "chat_template.jinja":
        (ckpt / where).write_text(template)
    else:
        tok_config["chat_template"] = template
    (ckpt / "tokenizer_config.json").write_text(json.dumps(tok_config))

    result = convert_checkpoint(ckpt, tmp_path / "o.gguf", "f32", progress=False)
    assert result.manifest["tokenizer"]["chat_template"] is True
    assert GGUFReader(result.path).fields["tokenizer.chat_template"].contents() == template
    with load_model(result.path, n_ctx=256) as model:
        assert isinstance(model.chat_format, JinjaFormat)
        msgs = [Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "2+2?")]
        assert model.chat_format.render(msgs) == GemmaFormat().render(msgs)
