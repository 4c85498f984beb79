"""Images in prompts: a tiny random Gemma 3 with a SigLIP tower (transformers) converted by our converter,
prompted through `Model.generate([... Image(...) ...])` and `generate --image`. The reference is
transformers' Gemma3ForConditionalGeneration on the processor's token layout: same prompt tokens, same
greedy tokens."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from convert_support import converted, tiny_gemma3_vision_checkpoint
from edge_runtime import load_model
from edge_runtime.errors import InvalidArgumentError, UnsupportedModelError
from edge_runtime.media import Audio, Image, split_marked

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

IMAGE = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
IMAGE_TOKEN = 262144  # the tiny checkpoint's image_token_index
N_NEW = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_gemma3_vision_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def files(tmp_path_factory, checkpoint):
    from edge_runtime.conversion.mmproj import convert_mmproj

    mmproj = convert_mmproj(checkpoint, tmp_path_factory.mktemp("media") / "mmproj.gguf", "f32", progress=False)
    return converted(tmp_path_factory, checkpoint, "f32"), mmproj


def hf_reference(checkpoint, before: str, after: str) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy new ids) the transformers way: the processor writes
    "\\n\\n<start_of_image>" + image tokens + "<end_of_image>\\n\\n" in place of the image."""
    tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    n_image = config["mm_tokens_per_image"]
    ids = (tok(before + "\n\n<start_of_image>")["input_ids"] + [IMAGE_TOKEN] * n_image
           + tok("<end_of_image>\n\n" + after, add_special_tokens=False)["input_ids"])
    model = transformers.Gemma3ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    pixels = torch.tensor((IMAGE.astype(np.float32) / 255 - 0.5) / 0.5).permute(2, 0, 1)[None]
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, pixel_values=pixels, attention_mask=torch.ones_like(input_ids),
                             token_type_ids=(input_ids == IMAGE_TOKEN).long(), max_new_tokens=N_NEW,
                             do_sample=False, min_new_tokens=N_NEW)
    return ids, out[0, len(ids):].tolist()


def encode_png(rgb: np.ndarray) -> bytes:
    """A minimal RGB PNG encoder (zlib + CRCs), so the test needs no imaging library."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = rgb.shape
    raw = b"".join(b"\0" + rgb[y].tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_image_prompt_equals_transformers(checkpoint, files):
    text_gguf, mmproj = files
    want_prompt, want_new = hf_reference(checkpoint, "Describe", "What is it?")
    with load_model(text_gguf, n_ctx=256, flash_attn=False, mmproj=mmproj) as model:
        result = model.generate(["Describe", Image(IMAGE), "What is it?"], temperature=0, max_tokens=N_NEW,
                                stop_tokens=())
        got_prompt = [IMAGE_TOKEN if t < 0 else t for t in model.generator.cache.tokens[:result.metrics.prompt_tokens]]
        assert got_prompt == want_prompt
        assert result.tokens == want_new[: len(result.tokens)] and len(result.tokens) >= 4
        # a text prompt afterwards does not reuse the image's cells as if they were text
        text = model.generate("Describe", temperature=0, max_tokens=2)
        assert text.metrics.reused_tokens <= 2


def test_cli_image_and_errors(checkpoint, files, tmp_path):
    text_gguf, mmproj = files
    png = tmp_path / "photo.png"
    png.write_bytes(encode_png(IMAGE))
    _, want_new = hf_reference(checkpoint, "Describe", "What is it?")
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "generate", "Describe<__media__>What is it?",
                           "--image", str(png), "--mmproj", str(mmproj), "-m", str(text_gguf), "--ctx", "256",
                           "--temperature", "0", "-n", str(N_NEW), "--json", "--no-flash-attn"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    tokens = json.loads(proc.stdout)["tokens"]
    assert tokens == want_new[: len(tokens)] and tokens
    with load_model(text_gguf, n_ctx=256, flash_attn=False) as model:
        with pytest.raises(InvalidArgumentError, match="no projector is loaded: pass --mmproj"):
            model.generate([Image(IMAGE), "Hi"], max_tokens=1)
    with load_model(text_gguf, n_ctx=256, flash_attn=False, mmproj=mmproj) as model:
        with pytest.raises(UnsupportedModelError, match="cannot hear audio"):
            model.generate([Audio(np.zeros(16000, np.float32), sample_rate=16000), "Hi"], max_tokens=1)
        with pytest.raises(InvalidArgumentError, match="not an image or audio file"):
            model.generate([Image(b"not an image at all"), "Hi"], max_tokens=1)
        with pytest.raises(InvalidArgumentError, match="image file not found"):
            model.generate([Image(tmp_path / "nope.png"), "Hi"], max_tokens=1)


def test_markers_place_the_media():
    a, b = Image(IMAGE), Image(IMAGE)
    assert split_marked("hello", [a]) == [a, "hello"]
    assert split_marked("x<__media__>y<__media__>", [a, b]) == ["x", a, "y", b]
    with pytest.raises(InvalidArgumentError, match="1 <__media__> markers for 2"):
        split_marked("x<__media__>", [a, b])
