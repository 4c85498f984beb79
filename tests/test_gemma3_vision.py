"""Gemma 3 vision projector: a tiny random Gemma3ForConditionalGeneration (transformers) converted by our
mmproj converter, loaded by llama.cpp's mtmd next to the converted text model; its image embeddings are
compared with transformers' `get_image_features` for the same image.

Tolerances (rel = max |diff| / max |reference|): f32 rel < 1e-3; f16 rel < 1e-2; q8_0 rel < 5e-2.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from convert_support import converted, hf_image_features, tiny_checkpoint, tiny_gemma3_vision_checkpoint
from edge_runtime.errors import ConversionError, InvalidArgumentError, UnsupportedModelError

pytest.importorskip("transformers")

IMAGE = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
TOLERANCE = {"f32": 1e-3, "f16": 1e-2, "q8_0": 5e-2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_gemma3_vision_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, checkpoint):
    from edge_runtime.backend.core import LlamaModel

    with LlamaModel.load(converted(tmp_path_factory, checkpoint, "f32")) as model:
        yield model


@pytest.fixture(scope="module")
def reference(checkpoint):
    return hf_image_features(checkpoint, IMAGE)


def _convert(tmp_path_factory, checkpoint, outtype: str):
    from edge_runtime.conversion.mmproj import convert_mmproj

    out = tmp_path_factory.mktemp("vision") / f"mmproj-{outtype}.gguf"
    return convert_mmproj(checkpoint, out, outtype, progress=False)


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_image_embeddings_match_transformers(tmp_path_factory, checkpoint, text_model, reference, outtype):
    from edge_runtime.backend.mtmd import MultimodalProjector

    with MultimodalProjector(_convert(tmp_path_factory, checkpoint, outtype), text_model, require_audio=False) as proj:
        assert proj.supports_vision and not proj.supports_audio
        got = proj.encode_image(IMAGE)
    assert got.shape == reference.shape == (16, 64)
    rel = float(np.abs(got - reference).max() / np.abs(reference).max())
    assert rel < TOLERANCE[outtype], rel


def test_metadata_and_tensor_layout(tmp_path_factory, checkpoint):
    from gguf import GGUFReader

    r = GGUFReader(_convert(tmp_path_factory, checkpoint, "q8_0"))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert meta["general.architecture"] == "clip" and meta["clip.projector_type"] == "gemma3"
    assert meta["clip.has_vision_encoder"] is True and meta["clip.has_audio_encoder"] is False
    assert meta["clip.vision.image_size"] == 64 and meta["clip.vision.patch_size"] == 4
    assert meta["clip.vision.projection_dim"] == 64 and meta["clip.vision.block_count"] == 2
    assert meta["clip.vision.image_mean"] == pytest.approx([0.5] * 3)
    assert "clip.vision.projector.scale_factor" not in meta  # 16x16 patches -> 4x4 tokens: the default 4
    tensors = {t.name: t for t in r.tensors}
    assert tensors["v.patch_embd.weight"].tensor_type.name == "F32"  # embeddings stay F32
    assert tensors["v.position_embd.weight"].tensor_type.name == "F32"
    assert tensors["mm.input_projection.weight"].tensor_type.name == "F16"
    assert tensors["v.blk.1.ffn_up.weight"].tensor_type.name == "Q8_0"
    assert tensors["v.blk.0.ln1.bias"].tensor_type.name == "F32"
    assert not any(name.startswith(("token_embd", "blk.")) for name in tensors)  # no text weights
    from safetensors.numpy import load_file

    hf = load_file(checkpoint / "model.safetensors")
    norm = next(v for k, v in hf.items() if k.endswith("mm_soft_emb_norm.weight"))
    np.testing.assert_allclose(np.asarray(tensors["mm.soft_emb_norm.weight"].data), norm + 1.0, rtol=1e-6)


def test_other_pooling_writes_the_scale_factor(tmp_path_factory, text_model):
    """4 tokens per image: a 16x16 grid pooled 8x8. clip.cpp reads the factor from the file."""
    from gguf import GGUFReader

    from edge_runtime.backend.mtmd import MultimodalProjector

    ckpt = tiny_gemma3_vision_checkpoint(tmp_path_factory, tokens_per_image=4)
    out = _convert(tmp_path_factory, ckpt, "f32")
    assert GGUFReader(out).fields["clip.vision.projector.scale_factor"].contents() == 8
    with MultimodalProjector(out, text_model, require_audio=False) as proj:
        got = proj.encode_image(IMAGE)
    ref = hf_image_features(ckpt, IMAGE)
    assert got.shape == ref.shape == (4, 64)
    assert np.abs(got - ref).max() / np.abs(ref).max() < TOLERANCE["f32"]


def test_any_image_size_is_resized_by_mtmd(tmp_path_factory, checkpoint, text_model):
    from edge_runtime.backend.mtmd import MultimodalProjector

    with MultimodalProjector(_convert(tmp_path_factory, checkpoint, "f32"), text_model, require_audio=False) as proj:
        wide = np.random.default_rng(1).integers(0, 256, (48, 100, 3), dtype=np.uint8)
        assert proj.encode_image(wide).shape == (16, 64)
        with pytest.raises(InvalidArgumentError, match="uint8 RGB"):
            proj.encode_image(np.zeros((64, 64), np.uint8))
        with pytest.raises(InvalidArgumentError, match="uint8 RGB"):
            proj.encode_image(np.zeros((64, 64, 3), np.float32))
        with pytest.raises(UnsupportedModelError, match="no audio encoder"):
            proj.encode_audio(np.zeros(16000, np.float32))


def test_text_only_and_broken_checkpoints_are_refused(tmp_path, tmp_path_factory, checkpoint):
    from edge_runtime.conversion.mmproj import convert_mmproj

    with pytest.raises(ConversionError, match="no vision_config.*text-only"):
        convert_mmproj(tiny_checkpoint(tmp_path_factory, "gemma3"), tmp_path / "a.gguf", progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["vision_config"]["num_hidden_layers"] = 3  # the checkpoint has 2
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="misses v.blk.2.attn_q.weight"):
        convert_mmproj(broken, tmp_path / "b.gguf", progress=False)
    cfg["vision_config"]["num_hidden_layers"] = 2
    cfg["mm_tokens_per_image"] = 15
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="does not pool"):
        convert_mmproj(broken, tmp_path / "c.gguf", progress=False)
    assert not list(tmp_path.glob("*.gguf"))


def test_unreadable_configs_are_named(tmp_path, checkpoint):
    from edge_runtime.conversion.mmproj import convert_mmproj

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConversionError, match="has no config.json: not a Hugging Face checkpoint folder"):
        convert_mmproj(empty, tmp_path / "a.gguf", progress=False)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    cases = [(empty / "config.json", "{not json", "config.json: invalid JSON"),
             (empty / "config.json", "[1, 2]", "config.json is not a JSON object"),
             (ckpt / "preprocessor_config.json", '{"image_mean": ', "preprocessor_config.json: invalid JSON"),
             (ckpt / "preprocessor_config.json", "[]", "preprocessor_config.json is not a JSON object")]
    for path, text, message in cases:
        path.write_text(text)
        with pytest.raises(ConversionError, match=message):
            convert_mmproj(path.parent, tmp_path / "a.gguf", progress=False)
    assert not list(tmp_path.glob("*.gguf"))


def test_cli_convert_mmproj_vision(tmp_path, checkpoint, capsys):
    from edge_runtime.cli import main

    out = tmp_path / "cli-vision.gguf"
    assert main(["convert-mmproj", str(checkpoint), "-o", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["path"] == str(out) and result["outtype"] == "f16" and out.stat().st_size == result["size_bytes"]
