"""Gemma 3n sees: a Gemma 3n checkpoint with its real MobileNetV5-300M vision tower (random weights, built by timm in
a child process: `gemma3n_vision.py`), our torch-free projector against llama.cpp's own converter
(`convert_hf_to_gguf.py --mmproj` from the llama-cpp-python sdist we pin), and mtmd's image embeddings from our
projector against transformers' `get_image_features` computation on the same pixels."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert_support import cache_dir, mark_done, tiny_checkpoint

from edge_runtime import Image, load_model
from edge_runtime.errors import ConversionError, InvalidModelError

pytest.importorskip("torch")
if importlib.util.find_spec("timm") is None:  # imported only in the child process (it wants torchvision)
    pytest.skip("timm is not installed (tools/install_test_deps.sh installs it)", allow_module_level=True)
ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP = ROOT / ".cache" / "llama-cpp-python-0.3.36" / "vendor" / "llama.cpp"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out, done = cache_dir(tmp_path_factory, "gemma3n-mobilenetv5")
    if not done:
        text = tiny_checkpoint(tmp_path_factory, "gemma3n")
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "gemma3n_vision.py"), str(out), str(text)],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        mark_done(out)
    return out


@pytest.fixture(scope="module")
def projector(built):
    from edge_runtime.conversion.mmproj import convert_mmproj

    return convert_mmproj(built / "checkpoint", built / "ours-mmproj.gguf", "f16", progress=False)


@pytest.fixture(scope="module")
def text(built, tmp_path_factory):
    from edge_runtime.conversion import convert_checkpoint

    return convert_checkpoint(built / "checkpoint", tmp_path_factory.mktemp("g3nv") / "text.gguf", "f16",
                              progress=False).path


@pytest.fixture(scope="module")
def reference(built):
    """llama.cpp's converter on the checkpoint's vision tensors (it cannot map Gemma 3n's audio group norms)."""
    from safetensors import safe_open
    from safetensors.torch import save_file  # bf16, which numpy cannot hold

    assert (LLAMA_CPP / "convert_hf_to_gguf.py").is_file(), \
        f"llama.cpp's converter is missing at {LLAMA_CPP}: run tools/install_test_deps.sh"
    src, ref = built / "checkpoint", built / "reference-checkpoint"
    ref.mkdir(exist_ok=True)
    with safe_open(src / "model.safetensors", "pt") as f:
        keep = {k: f.get_tensor(k) for k in f.keys() if k.startswith(("model.vision_tower.", "model.embed_vision."))}
    save_file(keep, str(ref / "model.safetensors"), metadata={"format": "pt"})
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (ref / f.name).write_bytes(f.read_bytes())
    out = built / "llama-cpp-mmproj.gguf"
    proc = subprocess.run([sys.executable, "convert_hf_to_gguf.py", str(ref), "--mmproj", "--outfile", str(out),
                           "--outtype", "f16"], cwd=LLAMA_CPP, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_projector_equals_llama_cpp_converter(projector, reference):
    sys.path.insert(0, str(LLAMA_CPP / "gguf-py"))
    try:
        import gguf  # llama.cpp's own reader, beside its converter
    finally:
        sys.path.pop(0)
    ours, theirs = gguf.GGUFReader(projector), gguf.GGUFReader(reference)
    mine = {t.name: t for t in ours.tensors}
    ref = {t.name: t for t in theirs.tensors if t.name.startswith(("v.", "mm.")) and not t.name.startswith("mm.a.")}
    assert set(mine) == set(ref) and len(mine) > 500
    for name, t in ref.items():
        a, b = np.asarray(mine[name].data), np.asarray(t.data)
        if name.endswith("layer_scale.gamma"):  # ours [1, C, 1, 1] where theirs is 1-D (mtmd aborts on 1-D)
            assert mine[name].shape.tolist() == [1, 1, int(t.shape[0]), 1] and np.array_equal(a.reshape(-1), b)
            continue
        assert mine[name].tensor_type == t.tensor_type and mine[name].shape.tolist() == t.shape.tolist(), name
        assert np.array_equal(a, b), name

    def vision_meta(reader):
        out = {}
        for key, field in reader.fields.items():
            if key.startswith("clip.vision") or key == "clip.has_vision_encoder":
                out[key] = field.contents()
        return out

    assert vision_meta(ours) == vision_meta(theirs)


def test_mtmd_embeddings_equal_transformers(built, projector, text):
    image, reference = np.load(built / "image.npy"), np.load(built / "reference.npy")
    with load_model(text, n_ctx=1024, flash_attn=False, mmproj=projector) as model:
        assert model.media.image is not None and model.media.audio is None
        embeddings = model.media.image.encode_image(image)
        assert embeddings.shape == reference.shape == (256, 2048)
        assert np.abs(embeddings - reference).max() < 1e-2 * np.abs(reference).max()  # measured: 6e-4 (f16 weights)
        result = model.generate(["Look:", Image(image), "What?"], temperature=0, max_tokens=2)
        keys = model.generator.cache.tokens[: result.metrics.prompt_tokens]
        first = keys.index(next(k for k in keys if k < 0))
        assert sum(k < 0 for k in keys) == 256 and keys[first - 1] == model.llama.token_id("<start_of_image>")
        assert result.metrics.media_encode_s > 0


def test_flat_layer_scales_are_refused_not_aborted(built, text, reference, tmp_path):
    """A projector as llama.cpp's converter writes it (1-D layer scales) would abort the process in mtmd's graph:
    it is refused with the fix instead."""
    with pytest.raises(InvalidModelError, match="layer scales as 1-D.*convert-mmproj"):
        load_model(text, n_ctx=512, mmproj=reference)
    with pytest.raises(ConversionError, match="written as f32 or f16"):
        from edge_runtime.conversion.mmproj import convert_mmproj

        convert_mmproj(built / "checkpoint", tmp_path / "q.gguf", "q8_0", progress=False)
