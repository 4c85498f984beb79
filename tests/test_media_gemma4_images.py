"""Images for Gemma 4: a tiny random Gemma 4 (transformers) whose vision tower our converter writes beside its audio
tower in one mmproj (as llama.cpp's converter lays it out: checked tensor for tensor against it once, by hand),
prompted with an image through mtmd. The reference is transformers' Gemma4ForConditionalGeneration fed its own
image processor's pixels (a 768x768 image: the size both keep, so no resampler differs). The text model has
Gemma 4 E2B's width, 1536: llama.cpp decides by the width whether image tokens attend to each other both ways,
and for E2B/E4B it agrees with transformers (causal)."""

from __future__ import annotations

import numpy as np
import pytest

from gemma4_tiny import build_tiny_gemma4

from edge_runtime import Audio, GenerationSettings, Image, load_model
from edge_runtime.chat import ChatSession

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL")
N_NEW = 8
IMAGE = np.random.default_rng(21).integers(0, 256, (768, 768, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from edge_runtime.conversion import convert_checkpoint
    from edge_runtime.conversion.mmproj import convert_mmproj

    work = tmp_path_factory.mktemp("gemma4_images")
    checkpoint = build_tiny_gemma4(work / "tiny-gemma4", hidden_size=1536)  # E2B's width: causal image attention
    text = convert_checkpoint(checkpoint, work / "text.gguf", "f32", progress=False).path
    return checkpoint, text, convert_mmproj(checkpoint, work / "mmproj.gguf", "f32", progress=False)


def test_projector_holds_vision_and_audio(files):
    import gguf

    _, _, mmproj = files
    reader = gguf.GGUFReader(mmproj)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("clip.has_vision_encoder") and field("clip.has_audio_encoder")
    assert field("clip.vision.projector_type") == "gemma4v" and field("clip.audio.projector_type") == "gemma4a"
    names = {t.name: t for t in reader.tensors}
    assert names["v.patch_embd.weight"].shape.tolist()[:3] == [16, 16, 3]
    assert names["v.position_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert "mm.input_projection.weight" in names and "mm.a.input_projection.weight" in names


def test_image_prompt_equals_transformers(files):
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    checkpoint, text_gguf, mmproj = files
    with load_model(text_gguf, n_ctx=1024, flash_attn=False, mmproj=mmproj) as model:
        assert model.media.image is model.media.audio  # one projector, both modalities
        result = model.generate(["Look:", Image(IMAGE), "What is it?"], temperature=0, max_tokens=N_NEW, stop_tokens=())
        ours = model.generator.cache.tokens[: result.metrics.prompt_tokens]
        embeddings = model.media.image.encode_image(IMAGE)
        model.generate(["Look:", Image(IMAGE), "What is it?"], max_tokens=0)
        logits = model.ctx.logits(-1)

    tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
    vocab = tok.get_vocab()
    image_id = transformers.AutoConfig.from_pretrained(checkpoint).image_token_id
    pixels = Gemma4ImageProcessorPil()(images=[IMAGE], return_tensors="pt")
    n_image = int(pixels["num_soft_tokens_per_image"][0])
    ids = (tok("Look:")["input_ids"] + [vocab["<|image>"]] + [image_id] * n_image + [vocab["<image|>"]]
           + tok("What is it?", add_special_tokens=False)["input_ids"])
    assert [image_id if t < 0 else t for t in ours] == ids  # the processor's layout, position for position
    hf = transformers.Gemma4ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    full = torch.tensor([ids + result.tokens])
    with torch.no_grad():
        want = hf.model.get_image_features(pixels["pixel_values"], pixels["image_position_ids"]).pooler_output
        ref = hf(input_ids=full, attention_mask=torch.ones_like(full), pixel_values=pixels["pixel_values"],
                 image_position_ids=pixels["image_position_ids"]).logits[0, len(ids) - 1:].numpy()
    want = want[0].numpy()  # one image: its soft tokens
    assert np.abs(embeddings - want).max() < 1e-2 * np.abs(want).max()  # mtmd's f16 rounding
    assert np.abs(logits - ref[0]).max() < 2e-3 * np.abs(ref[0]).max()  # measured: 4.5e-3 on logits up to 8.6
    # greedy tokens: equal up to the first step where transformers' own top two are closer than rounding
    checked = 0
    for step, token in enumerate(result.tokens):
        top2 = np.sort(ref[step])[-2:]
        if top2[1] - top2[0] < 0.01 * np.abs(ref[step]).max():
            break
        assert token == int(ref[step].argmax()), (step, result.tokens)
        checked += 1
    assert checked >= 6, checked  # measured: all 8


def test_chat_with_an_image_and_a_clip(files):
    from test_gemma_audio import SR, chirp

    _, text_gguf, mmproj = files
    with load_model(text_gguf, n_ctx=1024, flash_attn=False, mmproj=mmproj) as model:
        chat = ChatSession(model, settings=GenerationSettings(temperature=0, max_tokens=4))
        first = chat.ask([Image(IMAGE), "What is it?"])
        second = chat.ask([Audio(chirp(1.0), sample_rate=SR), "And this sound?"])
        third = chat.ask("Thanks.")
        assert first.metrics.media_encode_s > 0 and second.metrics.media_encode_s > 0
        assert third.metrics.media_encode_s == 0 and third.metrics.reused_tokens > second.metrics.reused_tokens > 256
