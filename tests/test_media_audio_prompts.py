"""Audio in prompts: a tiny random Gemma 4 with a conformer audio tower (transformers) converted by our
converters, prompted through `Model.generate([... Audio(...) ...])`. The reference is transformers'
Gemma4ForConditionalGeneration on the processor's layout (`<|audio>` + soft tokens + `<audio|>`), fed the
log-mel that mtmd computes (its floor differs from the HF extractor's; see test_gemma_audio.py)."""

from __future__ import annotations

import pytest

from gemma4_tiny import build_tiny_gemma4
from test_gemma_audio import SR, chirp, mtmd_style_features

from edge_runtime import Audio, load_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
N_NEW = 8


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from edge_runtime.conversion import convert_checkpoint
    from edge_runtime.conversion.mmproj import convert_mmproj

    work = tmp_path_factory.mktemp("audio_prompts")
    checkpoint = build_tiny_gemma4(work / "tiny-gemma4")
    text = convert_checkpoint(checkpoint, work / "text.gguf", "f32", progress=False).path
    mmproj = convert_mmproj(checkpoint, work / "mmproj.gguf", "f32", progress=False)
    return checkpoint, text, mmproj


def test_audio_prompt_equals_transformers(files):
    from transformers.models.gemma4 import Gemma4AudioFeatureExtractor, Gemma4ForConditionalGeneration

    checkpoint, text_gguf, mmproj = files
    audio = chirp(2.0)
    with load_model(text_gguf, n_ctx=512, flash_attn=False, mmproj=mmproj) as model:
        result = model.generate(["Listen:", Audio(audio, sample_rate=SR)], temperature=0, max_tokens=N_NEW,
                                stop_tokens=())
        ours = model.generator.cache.tokens[: result.metrics.prompt_tokens]

    tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
    hf = Gemma4ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    features = torch.tensor(mtmd_style_features(audio, Gemma4AudioFeatureExtractor())[None], dtype=torch.float32)
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        n_audio = hf.model.get_audio_features(features, mask).pooler_output.shape[1]
    vocab = tok.get_vocab()
    ids = tok("Listen:")["input_ids"] + [vocab["<|audio>"]] + [vocab["<|audio|>"]] * n_audio + [vocab["<audio|>"]]
    assert [vocab["<|audio|>"] if t < 0 else t for t in ours] == ids  # the processor's layout, position for position
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = hf.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), input_features=features,
                          input_features_mask=mask, max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
    want = out[0, len(ids):].tolist()
    assert result.tokens == want[: len(result.tokens)] and len(result.tokens) >= 4, (result.tokens, want)
