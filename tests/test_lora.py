"""LoRA adapters: PEFT -> GGUF without torch (`convert-lora`), applied by the real llama.cpp, against
transformers + peft as the numerical reference, on a tiny random Gemma 3."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from convert_support import converted, reference_tokens, tiny_checkpoint

from edge_runtime import load_model
from edge_runtime.errors import ConversionError, InvalidArgumentError
from edge_runtime.lora.convert import convert_lora

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(ckpt, out, *, r=8, alpha=16, seed=1, **config):
    """A random PEFT adapter whose B matrices are not zero (fresh LoRA starts at zero)."""
    import transformers

    torch.manual_seed(seed)
    base = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    model = peft.get_peft_model(base, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, **config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    model.save_pretrained(out)
    return model


def peft_logits(model, tokens, scale: float = 1.0) -> np.ndarray:
    """transformers + peft logits with every LoRA scaling multiplied by `scale`."""
    layers = [m for m in model.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict)]
    saved = [dict(m.scaling) for m in layers]
    for m in layers:
        for k in m.scaling:
            m.scaling[k] *= scale
    try:
        model.eval()
        with torch.no_grad():
            return model(torch.tensor([tokens])).logits[0].float().numpy()
    finally:
        for m, s in zip(layers, saved):
            m.scaling.clear()
            m.scaling.update(s)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    ckpt = tiny_checkpoint(tmp_path_factory, "gemma3")
    return ckpt, converted(tmp_path_factory, ckpt, "f32")


def test_adapter_logits_equal_transformers_and_peft_at_scale_1_and_half(base, tmp_path, tmp_path_factory):
    ckpt, gguf_path = base
    tokens = reference_tokens(tmp_path_factory)
    ref = make_adapter(ckpt, tmp_path / "adapter")
    out = convert_lora(tmp_path / "adapter", ckpt, tmp_path / "adapter.gguf", progress=False)
    assert out.tensors == 4 * 7 and out.rank == 8 and out.alpha == 16
    with load_model(gguf_path, n_ctx=256, flash_attn=False) as model:
        plain = model.logits(tokens)
        model.set_adapters({tmp_path / "adapter.gguf": 1.0})
        full = model.logits(tokens)
        model.set_adapters({tmp_path / "adapter.gguf": 0.5})
        half = model.logits(tokens)
        model.set_adapters({})
        assert np.array_equal(model.logits(tokens), plain)  # the base again
    want_full, want_half = peft_logits(ref, tokens), peft_logits(ref, tokens, 0.5)
    assert abs(full - want_full).max() < 1e-3 * abs(want_full).max()
    assert abs(half - want_half).max() < 1e-3 * abs(want_half).max()
    assert abs(plain - want_full).max() > 0.1  # the adapter matters


def test_rslora_and_alpha_pattern_are_scaled_as_peft_does(base, tmp_path, tmp_path_factory):
    ckpt, gguf_path = base
    tokens = reference_tokens(tmp_path_factory)
    ref = make_adapter(ckpt, tmp_path / "rs", r=4, alpha=8, seed=2, use_rslora=True, alpha_pattern={"q_proj": 32},
                       rank_pattern={"down_proj": 2})
    convert_lora(tmp_path / "rs", gguf_path, tmp_path / "rs.gguf", "f16", progress=False)  # base given as GGUF
    with load_model(gguf_path, n_ctx=256, flash_attn=False, lora=((str(tmp_path / "rs.gguf"), 1.0),)) as model:
        got = model.logits(tokens)
    want = peft_logits(ref, tokens)
    assert abs(got - want).max() < 5e-3 * abs(want).max()  # f16 adapter


def test_gemma2_adapter_and_one_for_another_architecture(base, tmp_path, tmp_path_factory):
    """Gemma 2 (soft-capping, its own layer names) through the same tables; its adapter is refused by a
    Gemma 3 model before llama.cpp sees it."""
    ckpt2 = tiny_checkpoint(tmp_path_factory, "gemma2")
    tokens = reference_tokens(tmp_path_factory)
    ref = make_adapter(ckpt2, tmp_path / "g2", seed=4)
    adapter = convert_lora(tmp_path / "g2", ckpt2, tmp_path / "g2.gguf", progress=False)
    assert adapter.architecture == "gemma2"
    with load_model(converted(tmp_path_factory, ckpt2, "f32"), n_ctx=256, flash_attn=False,
                    lora=((str(adapter.path), 1.0),)) as model:
        got = model.logits(tokens)
    want = peft_logits(ref, tokens)
    assert abs(got - want).max() < 1e-3 * abs(want).max()
    with load_model(base[1], n_ctx=256) as gemma3, pytest.raises(InvalidArgumentError, match="adapter for gemma2"):
        gemma3.set_adapters({adapter.path: 1.0})


def test_chat_keeps_working_across_a_swap_and_the_cache_is_not_reused(base, tmp_path):
    from edge_runtime.chat import ChatSession

    ckpt, gguf_path = base
    make_adapter(ckpt, tmp_path / "a")
    adapter = convert_lora(tmp_path / "a", ckpt, tmp_path / "a.gguf", progress=False).path
    with load_model(gguf_path, n_ctx=256, flash_attn=False, parallel=2) as model:
        from edge_runtime import GenerationSettings

        chat = ChatSession(model, settings=GenerationSettings(temperature=0, max_tokens=4))
        first = chat.send("Hello").consume()
        model.set_adapters({adapter: 1.0})
        second = chat.send("And?").consume()
        assert second.metrics.reused_tokens == 0 and first.text is not None
        assert model.adapters == {str(adapter): 1.0}


def test_errors_are_clear(base, tmp_path, tmp_path_factory):
    ckpt, gguf_path = base
    make_adapter(ckpt, tmp_path / "ok")
    good = convert_lora(tmp_path / "ok", ckpt, tmp_path / "ok.gguf", progress=False).path
    # DoRA, full module copies
    config = json.loads((tmp_path / "ok" / "adapter_config.json").read_text())
    for change, match in (({"use_dora": True}, "DoRA"), ({"modules_to_save": ["lm_head"]}, "modules_to_save")):
        bad = tmp_path / f"bad-{match}"
        bad.mkdir()
        (bad / "adapter_config.json").write_text(json.dumps({**config, **change}))
        (bad / "adapter_model.safetensors").write_bytes((tmp_path / "ok" / "adapter_model.safetensors").read_bytes())
        with pytest.raises(ConversionError, match=match):
            convert_lora(bad, ckpt, tmp_path / "x.gguf", progress=False)
    # another base (wider model): refused by the converter and at load time
    other = tiny_checkpoint(tmp_path_factory, "gemma3", hidden_size=96)
    with pytest.raises(ConversionError, match="trained for another model"):
        convert_lora(tmp_path / "ok", other, tmp_path / "x.gguf", progress=False)
    assert not (tmp_path / "x.gguf").exists()
    other_gguf = converted(tmp_path_factory, other, "f32")
    with load_model(other_gguf, n_ctx=256) as model:
        with pytest.raises(InvalidArgumentError, match="another base model"):
            model.set_adapters({good: 1.0})
        with pytest.raises(InvalidArgumentError, match="not a LoRA adapter"):
            model.set_adapters({gguf_path: 1.0})
        with pytest.raises(InvalidArgumentError, match="does not exist"):
            model.set_adapters({tmp_path / "missing.gguf": 1.0})
        assert model.generate("Hi", max_tokens=2).finish_reason  # still usable


def test_cli_convert_lora_and_generate_with_it(base, tmp_path):
    ckpt, gguf_path = base
    make_adapter(ckpt, tmp_path / "cli")
    run = subprocess.run([sys.executable, "-m", "edge_runtime", "convert-lora", str(tmp_path / "cli"), "--base",
                          str(ckpt), "-o", str(tmp_path / "cli.gguf"), "--json", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["modules"] == 28
    gen = subprocess.run([sys.executable, "-m", "edge_runtime", "generate", "--model", str(gguf_path), "--lora",
                          f"{tmp_path / 'cli.gguf'}:0.5", "-n", "4", "--temperature", "0", "--json", "Hello"],
                         capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr
    assert json.loads(gen.stdout)["metrics"]["generated_tokens"] >= 1
    bad = subprocess.run([sys.executable, "-m", "edge_runtime", "generate", "--model", str(gguf_path), "--lora",
                          str(gguf_path), "-n", "2", "Hello"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "not a LoRA adapter" in bad.stderr and "Traceback" not in bad.stderr


def test_merged_conversion_equals_the_adapter_applied(base, tmp_path, tmp_path_factory):
    """`convert CKPT --lora DIR:SCALE`: the adapter merged into the weights gives transformers + peft's
    logits; the sliding-window pattern and everything not adapted stay the base's."""
    from edge_runtime.conversion import convert_checkpoint
    from edge_runtime.gguf_file import read_header

    ckpt, gguf_path = base
    tokens = reference_tokens(tmp_path_factory)
    ref = make_adapter(ckpt, tmp_path / "m", seed=3, use_rslora=True)
    merged = convert_checkpoint(ckpt, tmp_path / "merged.gguf", "f32", lora=[(tmp_path / "m", 0.5)],
                                progress=False)
    assert merged.manifest["lora_merged"][0]["scale"] == 0.5
    with load_model(merged.path, n_ctx=256, flash_attn=False) as model:
        got = model.logits(tokens)
    want = peft_logits(ref, tokens, 0.5)
    assert abs(got - want).max() < 1e-3 * abs(want).max()
    a, b = read_header(merged.path), read_header(gguf_path)
    keys = [k for k in b.metadata if "sliding_window" in k or "block_count" in k]
    assert keys and all(a.metadata[k] == b.metadata[k] for k in keys)
    run = subprocess.run([sys.executable, "-m", "edge_runtime", "convert", str(ckpt), "-o", str(tmp_path / "cli.gguf"),
                          "--outtype", "f32", "--lora", f"{tmp_path / 'm'}:0.5", "--no-progress", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    with load_model(tmp_path / "cli.gguf", n_ctx=256, flash_attn=False) as model:
        assert np.array_equal(model.logits(tokens), got)


def _close(a, b) -> bool:
    a, b = np.array(a), np.array(b)
    return a.shape == b.shape and abs(a - b).max() < 1e-3 * abs(b).max()


def test_per_call_adapter_sets_are_never_batched_together(base, tmp_path, tmp_path_factory, sampled_logits):
    """Streams under different adapter sets take turns; each gets the logits of its own set."""
    from edge_runtime import GenerationSettings

    ckpt, gguf_path = base
    make_adapter(ckpt, tmp_path / "p")
    adapter = str(convert_lora(tmp_path / "p", ckpt, tmp_path / "p.gguf", progress=False).path)
    tokens = reference_tokens(tmp_path_factory)[:12]
    sets = [(), ((adapter, 1.0),), ((adapter, 0.5),)]
    greedy = GenerationSettings(temperature=0, max_tokens=6)
    with load_model(gguf_path, n_ctx=256, flash_attn=False, parallel=3) as model:
        engine, seen = model.generator, []
        decode = model.ctx.decode_many

        def watched(entries):
            seen.append({r.lora for r in engine._running} | {engine.adapters.current})
            return decode(entries)

        model.ctx.decode_many = watched
        streams = [model.stream(tokens, greedy.replace(lora=sets[i % 3])) for i in range(6)]
        many = [s.consume() for s in streams]
        assert all(len(step) == 1 for step in seen)  # one adapter set per decode
        alone = []
        for spec in sets:
            model.set_adapters(dict(spec))
            alone.append(model.generate(tokens, greedy).tokens)
    assert [r.tokens for r in many] == [alone[i % 3] for i in range(6)]
    # The tiny model repeats one token: the logits each step saw are what tell the sets apart.
    assert all(_close(sampled_logits[i], sampled_logits[6 + i % 3]) for i in range(6))
    assert not _close(sampled_logits[6], sampled_logits[7]) and not _close(sampled_logits[7], sampled_logits[8])


def test_server_lists_adapters_and_takes_a_per_request_set(base, tmp_path, sampled_logits):
    import openai

    from edge_runtime.server import OpenAIServer, ServerSettings

    ckpt, gguf_path = base
    make_adapter(ckpt, tmp_path / "s")
    adapter = str(convert_lora(tmp_path / "s", ckpt, tmp_path / "s.gguf", progress=False).path)
    with load_model(gguf_path, n_ctx=256, parallel=2, lora=((adapter, 0.5),)) as model, \
            OpenAIServer(model, ServerSettings(port=0)).start() as srv:
        import urllib.request

        with urllib.request.urlopen(srv.url + "/lora-adapters", timeout=30) as resp:
            assert json.loads(resp.read()) == [{"id": 0, "path": adapter, "scale": 0.5}]
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        prompt = "The capital of France is"

        def reply(extra=None):
            return client.completions.create(model="m", prompt=prompt, max_tokens=6, temperature=0,
                                             extra_body=extra).choices[0].text

        default, base_only, full = reply(), reply({"lora": []}), reply({"lora": [{"id": 0, "scale": 1.0}]})
        with pytest.raises(openai.BadRequestError, match="not one of the 1 adapters"):
            reply({"lora": [{"id": 3, "scale": 1}]})
        with pytest.raises(openai.BadRequestError, match="lora items"):
            reply({"lora": [{"name": "x"}]})
        for spec, got in (({adapter: 0.5}, default), ({}, base_only), ({adapter: 1.0}, full)):
            model.set_adapters(spec)
            assert model.generate(prompt, max_tokens=6, temperature=0).text == got
    assert all(_close(sampled_logits[i], sampled_logits[3 + i]) for i in range(3))  # requests 0-2, library 3-5
    assert not _close(sampled_logits[0], sampled_logits[1]) and not _close(sampled_logits[1], sampled_logits[2])


def test_the_assistant_loads_its_text_model_with_adapters(base, tmp_path):
    import argparse

    from edge_runtime.audio.cli import _load_text_model

    ckpt, gguf_path = base
    make_adapter(ckpt, tmp_path / "as")
    adapter = str(convert_lora(tmp_path / "as", ckpt, tmp_path / "as.gguf", progress=False).path)
    args = argparse.Namespace(text_model=str(gguf_path), threads=None, rpc=None, rpc_split=None, rpc_key_file=None,
                              lora=[f"{adapter}:0.25"])
    with _load_text_model(args) as model:
        assert model.adapters == {adapter: 0.25}
    args.lora = [str(gguf_path)]
    with pytest.raises(InvalidArgumentError, match="not a LoRA adapter"):
        _load_text_model(args)


def test_a_multimodal_checkpoints_adapter(tmp_path, tmp_path_factory):
    """PEFT on Gemma3ForConditionalGeneration names the text layers `model.language_model.layers.N`: mapped
    by the converter's own prefixes; text logits equal transformers + peft."""
    import transformers

    from convert_support import tiny_gemma3_vision_checkpoint

    ckpt = tiny_gemma3_vision_checkpoint(tmp_path_factory)
    tokens = reference_tokens(tmp_path_factory)
    torch.manual_seed(5)
    ref = peft.get_peft_model(transformers.AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32),
                              peft.LoraConfig(r=8, lora_alpha=16,
                                              target_modules=r".*language_model.*\.(q_proj|v_proj|down_proj)"))
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    ref.save_pretrained(tmp_path / "mm")
    adapter = convert_lora(tmp_path / "mm", ckpt, tmp_path / "mm.gguf", progress=False)
    assert adapter.tensors == 4 * 3
    with load_model(converted(tmp_path_factory, ckpt, "f32"), n_ctx=256, flash_attn=False,
                    lora=((str(adapter.path), 1.0),)) as model:
        got = model.logits(tokens)
    want = peft_logits(ref, tokens)
    assert abs(got - want).max() < 1e-3 * abs(want).max()
