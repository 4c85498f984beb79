"""Gemma 4 audio: mmproj conversion, mtmd embeddings vs transformers, the gemma speech engine.

A tiny random Gemma 4 checkpoint with a real (2-layer) conformer audio tower is
built with transformers, converted by our converters (text GGUF and audio
mmproj), loaded by llama.cpp's mtmd, and its audio embeddings are compared
with transformers' audio tower + `embed_audio` projection on the same audio,
computed through the HF feature extractor (the model's own mel front-end).

Tolerance. mtmd computes the log-mel features itself, and its gemma4a front end
floors the mel energies (`ln(max(mel, 1e-3))`) where HF's feature extractor
adds the floor (`ln(mel + 1e-3)`); the two differ only for mel values near
1e-3. Through HF's own feature extractor the measured worst element is about
1.7e-3 (chirp) on outputs of magnitude up to about 0.5, cosine per token
> 0.99999; we assert < 1e-2 and > 0.9999. To check the converted encoder
itself, the HF tower is also fed features computed with mtmd's floor (HF's
window and mel filters, numpy float64 FFT): then the worst element is about
7e-5 with F32 weights, asserted < 5e-4. A wrong tensor mapping, a missing
softplus or clamp gives errors orders of magnitude larger.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gemma4_tiny import build_tiny_gemma4

from edge_runtime.errors import AudioError, ConversionError, ModelNotFoundError, UnsupportedModelError

SR = 16000


def chirp(seconds: float, *, f0: float = 200.0, f1: float = 1400.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    k = (f1 - f0) / (2 * seconds)
    return (amp * np.sin(2 * np.pi * (f0 + k * t) * t)).astype(np.float32)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gemma4_audio")


@pytest.fixture(scope="module")
def checkpoint(workdir) -> Path:
    return build_tiny_gemma4(workdir / "tiny-gemma4")


@pytest.fixture(scope="module")
def text_gguf(checkpoint, workdir) -> Path:
    from edge_runtime.conversion import convert_checkpoint

    out = workdir / "text-f32.gguf"
    convert_checkpoint(checkpoint, out, "f32", progress=False)
    return out


@pytest.fixture(scope="module")
def mmproj(checkpoint, workdir):
    """Audio projectors by output type, converted on first use."""
    from edge_runtime.conversion.mmproj import convert_mmproj

    made: dict[str, Path] = {}

    def get(outtype: str = "f16") -> Path:
        if outtype not in made:
            made[outtype] = convert_mmproj(checkpoint, workdir / f"mmproj-{outtype}.gguf", outtype, progress=False)
        return made[outtype]

    return get


def mtmd_style_features(audio: np.ndarray, fe) -> np.ndarray:
    """HF's log-mel (semicausal padding, 20 ms Hann, 512-point FFT, HTK mel) with mtmd's floor: ln(max(mel, 1e-3))."""
    hop, frame = fe.hop_length, fe.frame_length
    wave = np.pad(audio.astype(np.float64), (frame // 2, 0))
    n = (len(wave) - (frame + 1)) // hop + 1
    frames = np.stack([wave[i * hop : i * hop + frame] for i in range(n)]) * fe.window
    mel = np.abs(np.fft.rfft(frames, n=fe.fft_length, axis=-1)) @ fe.mel_filters
    return np.log(np.maximum(mel, 1e-3))


@pytest.fixture(scope="module")
def hf_reference(checkpoint):
    """transformers' audio embeddings (audio tower + embed_audio) for a 2 s chirp.

    Returns (audio, through HF's feature extractor, through mtmd-style features).
    """
    import torch
    from transformers.models.gemma4 import Gemma4AudioFeatureExtractor, Gemma4ForConditionalGeneration

    torch.set_num_threads(2)
    audio = chirp(2.0)
    model = Gemma4ForConditionalGeneration.from_pretrained(checkpoint).eval()
    fe = Gemma4AudioFeatureExtractor()
    features = fe([audio], sampling_rate=SR, return_tensors="pt")
    own = torch.tensor(mtmd_style_features(audio, fe)[None], dtype=torch.float32)
    with torch.no_grad():
        out = model.model.get_audio_features(features["input_features"], features["input_features_mask"])
        out_own = model.model.get_audio_features(own, torch.ones(own.shape[:2], dtype=torch.bool))
    return audio, out.pooler_output[0].numpy(), out_own.pooler_output[0].numpy()


def _read(path: Path):
    import gguf

    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: t for t in reader.tensors}
    return meta, tensors


# --------------------------------------------------------------------------- converter


def test_mmproj_metadata_and_tensor_layout(checkpoint, mmproj):
    from safetensors.numpy import load_file

    meta, tensors = _read(mmproj("f16"))
    assert meta["general.architecture"] == "clip"
    assert meta["clip.has_audio_encoder"] is True
    assert meta["clip.audio.projector_type"] == "gemma4a"
    assert meta["clip.audio.num_mel_bins"] == 128
    assert meta["clip.audio.projection_dim"] == 64  # the text model's n_embd
    assert meta["clip.audio.block_count"] == 2
    # the vision tower rides along in the same file, as llama.cpp's converter writes it
    assert meta["clip.has_vision_encoder"] is True and meta["clip.vision.projector_type"] == "gemma4v"
    assert all(name.startswith(("a.", "v.", "mm.")) for name in tensors)

    hf = load_file(checkpoint / "model.safetensors")
    # per_dim_scale is stored after softplus
    raw = hf["model.audio_tower.layers.0.self_attn.per_dim_scale"]
    np.testing.assert_allclose(tensors["a.blk.0.per_dim_scale.weight"].data, np.log1p(np.exp(raw)), rtol=1e-6)
    # depthwise conv [C, 1, K] -> [C, K], F32
    dw = tensors["a.blk.0.conv_dw.weight"]
    assert dw.tensor_type.name == "F32"
    np.testing.assert_array_equal(np.asarray(dw.data).reshape(64, 5), hf["model.audio_tower.layers.0.lconv1d.depthwise_conv1d.weight"][:, 0, :])
    # clamp scalars as 1-D F32 tensors of one value
    clamp = tensors["a.blk.1.attn_q.input_max"]
    assert clamp.tensor_type.name == "F32" and list(clamp.shape) == [1]
    assert float(clamp.data[0]) == float(hf["model.audio_tower.layers.1.self_attn.q_proj.input_max"])
    # subsampling convolutions stay F32; matrices follow the output type
    assert tensors["a.conv1d.0.weight"].tensor_type.name == "F32"
    assert tensors["a.blk.0.attn_q.weight"].tensor_type.name == "F16"
    assert tensors["mm.a.input_projection.weight"].tensor_type.name == "F16"


def test_bf16_checkpoint_converts_exactly(workdir, checkpoint, mmproj):
    """Real Gemma 4 checkpoints are bf16: widened exactly, softplus applied after widening."""
    import torch

    from edge_runtime.conversion.mmproj import convert_mmproj

    src = build_tiny_gemma4(workdir / "tiny-bf16", bf16=True)
    _, got = _read(convert_mmproj(src, workdir / "mmproj-from-bf16.gguf", "f32", progress=False))
    _, ref = _read(mmproj("f32"))
    assert set(got) == set(ref)
    for name in ("a.blk.1.attn_v.weight", "a.conv1d.0.weight", "mm.a.input_projection.weight", "a.blk.0.conv_dw.weight"):
        want = torch.tensor(np.asarray(ref[name].data)).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(np.asarray(got[name].data), want)
    from safetensors.torch import load_file

    x = load_file(src / "model.safetensors")["model.audio_tower.layers.0.self_attn.per_dim_scale"]
    assert x.dtype == torch.bfloat16
    np.testing.assert_allclose(np.asarray(got["a.blk.0.per_dim_scale.weight"].data),
                               torch.nn.functional.softplus(x.float()).numpy(), rtol=1e-6)


def test_checkpoint_without_audio_tower(workdir):
    """A Gemma 4 without audio (the dense models) gets a vision-only projector; one with neither tower is refused
    and leaves no file."""
    from edge_runtime.audio.gemma_audio import GemmaSpeechEngine
    from edge_runtime.conversion import convert_checkpoint
    from edge_runtime.conversion.mmproj import convert_mmproj

    src = build_tiny_gemma4(workdir / "no-audio", with_audio=False)
    out = convert_mmproj(src, workdir / "no-audio-mmproj.gguf", progress=False)
    meta, _ = _read(out)
    assert meta["clip.has_vision_encoder"] is True and meta["clip.has_audio_encoder"] is False
    text = convert_checkpoint(src, workdir / "no-audio.gguf", "f32", progress=False).path
    with pytest.raises(UnsupportedModelError, match="has no audio encoder"):
        GemmaSpeechEngine(text, out)
    config = json.loads((src / "config.json").read_text())
    del config["vision_config"]
    (src / "config.json").write_text(json.dumps(config))
    out = workdir / "neither-mmproj.gguf"
    with pytest.raises(ConversionError, match="neither an audio nor a vision tower"):
        convert_mmproj(src, out, progress=False)
    assert not out.exists()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".neither-mmproj")]


def test_failure_while_writing_leaves_no_file(workdir, checkpoint):
    import shutil

    from safetensors.numpy import load_file, save_file

    from edge_runtime.conversion.mmproj import convert_mmproj

    src = workdir / "bad-dwconv"
    shutil.copytree(checkpoint, src)
    tensors = load_file(src / "model.safetensors")
    name = "model.audio_tower.layers.1.lconv1d.depthwise_conv1d.weight"
    tensors[name] = np.zeros((64, 2, 5), dtype=np.float32)  # not a depthwise [C, 1, K] weight
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    out = workdir / "bad-mmproj.gguf"
    with pytest.raises(ConversionError, match="depthwise"):
        convert_mmproj(src, out, progress=False)
    assert not out.exists()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".bad-mmproj")]


def test_gemma3n_checkpoint_is_refused_with_reason(workdir):
    from edge_runtime.conversion.mmproj import convert_mmproj

    src = workdir / "fake-gemma3n"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "gemma3n", "audio_config": {"hidden_size": 1536}}))
    with pytest.raises(ConversionError, match="Gemma 3n checkpoint has no vision tower; its audio encoder is written as "
                                              "ONNX.*-o audio.onnx"):
        convert_mmproj(src, workdir / "g3n.gguf", progress=False)


def test_bad_outtype_and_missing_folder(workdir, checkpoint):
    from edge_runtime.conversion.mmproj import convert_mmproj

    with pytest.raises(ConversionError, match="unknown outtype"):
        convert_mmproj(checkpoint, workdir / "x.gguf", "q4_k", progress=False)
    with pytest.raises(ConversionError, match="does not exist"):
        convert_mmproj(workdir / "nope", workdir / "x.gguf", progress=False)


# --------------------------------------------------------------------------- mtmd vs transformers


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_audio_embeddings_match_transformers(text_gguf, mmproj, hf_reference, outtype):
    from edge_runtime.backend.core import LlamaModel
    from edge_runtime.backend.mtmd import MultimodalProjector

    audio, ref, ref_same_mel = hf_reference
    with LlamaModel.load(text_gguf) as model, MultimodalProjector(mmproj(outtype), model) as proj:
        assert proj.supports_audio and proj.audio_sample_rate == SR
        emb = proj.encode_audio(audio, SR)
    assert emb.shape == ref.shape == (50, 64)  # 2 s at 25 tokens/s, text n_embd
    err = np.abs(emb - ref).max()
    cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
    assert err < 1e-2, f"max abs error {err}"
    assert cos.min() > 0.9999, f"min cosine {cos.min()}"
    # the same mel floor on both sides: what is left is the encoder (and F16 rounding)
    err_same_mel = np.abs(emb - ref_same_mel).max()
    assert err_same_mel < (5e-4 if outtype == "f32" else 2e-3), f"max abs error {err_same_mel}"


def test_q8_0_projector_stays_close(text_gguf, mmproj, hf_reference):
    from edge_runtime.backend.core import LlamaModel
    from edge_runtime.backend.mtmd import MultimodalProjector

    audio, ref, _ = hf_reference
    with LlamaModel.load(text_gguf) as model, MultimodalProjector(mmproj("q8_0"), model) as proj:
        emb = proj.encode_audio(audio, SR)
    cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.999


def test_long_audio_is_encoded_in_30_s_pieces(text_gguf, mmproj):
    from edge_runtime.backend.core import LlamaModel
    from edge_runtime.backend.mtmd import MultimodalProjector

    audio = chirp(31.0, amp=0.2)
    with LlamaModel.load(text_gguf) as model, MultimodalProjector(mmproj("f16"), model) as proj:
        emb = proj.encode_audio(audio, SR)
        head = proj.encode_audio(audio[: 30 * SR], SR)
    assert emb.shape[1] == 64
    assert head.shape[0] == 750  # 30 s at 25 tokens/s
    assert 770 <= emb.shape[0] <= 780
    np.testing.assert_allclose(emb[:750], head, atol=1e-5)  # the first piece is encoded on its own


# --------------------------------------------------------------------------- the gemma speech engine


@pytest.fixture(scope="module")
def engine(text_gguf, mmproj):
    from edge_runtime.audio.gemma_audio import GemmaAudioSettings, GemmaSpeechEngine

    with GemmaSpeechEngine(text_gguf, mmproj("f16"), GemmaAudioSettings(max_new_tokens=8, n_ctx=1024)) as eng:
        yield eng


def test_engine_generates_deterministic_text_from_audio(engine):
    audio = chirp(1.5)
    streamed = list(engine.stream(audio, task="transcribe", language="English"))
    assert streamed, "the model produced no token"
    assert all(isinstance(text, str) for _, text in streamed)
    assert {piece.start for piece, _ in streamed} == {0.0}
    first = engine.transcribe_text(audio, language="English")
    assert first == engine.transcribe_text(audio, language="English")  # greedy: same audio, same text
    assert first == "".join(t for _, t in streamed).strip()
    # a different instruction (translation) is a different prompt, still deterministic
    tr = engine.translate_text(audio, "French")
    assert tr == engine.translate_text(audio, "French")


def test_engine_through_the_registry(text_gguf, mmproj):
    from edge_runtime.audio.engines import SpeechEngine, TextPiece, create_engine

    audio = chirp(1.5)
    eng = create_engine("gemma", model=str(text_gguf), mmproj=str(mmproj("f16")), max_new_tokens=8, n_ctx=1024)
    try:
        assert isinstance(eng, SpeechEngine) and eng.name == "gemma"
        pieces = list(eng.transcribe(audio, language="English"))
        assert all(isinstance(p, TextPiece) for p in pieces)
        assert [(p.start, p.end) for p in pieces] in ([], [(0.0, 1.5)])
        assert pieces == list(eng.transcribe(audio, language="English"))
        assert list(eng.transcribe(audio, task="translate")) == list(eng.transcribe(audio, task="translate"))
    finally:
        eng.close()


def test_engine_cuts_long_audio_into_pieces(engine):
    audio = chirp(33.0, amp=0.2)
    audio[int(28.0 * SR) : int(28.2 * SR)] = 0.0
    from edge_runtime.audio.gemma_audio import split_audio

    expected = [(b / SR, e / SR) for b, e in split_audio(audio, SR)]
    assert len(expected) == 2 and 28.0 <= expected[0][1] <= 28.2
    pieces = list(engine.transcribe(audio))
    # a piece where the model stops at once yields no text: pieces are a subset, in order
    assert [(p.start, p.end) for p in pieces] == [x for x in expected if x in {(p.start, p.end) for p in pieces}]
    streamed = [(piece.start, piece.end) for piece, _ in engine.stream(audio)]
    assert set(streamed) <= set(expected) and streamed == sorted(streamed)


def test_engine_embeddings_match_projector(engine, hf_reference):
    audio, ref, _ = hf_reference
    emb = engine.audio_embeddings(audio)
    assert emb.shape == ref.shape


def test_prompt_follows_gemma4_turn_format():
    from edge_runtime.audio.gemma_audio import build_prompt, task_instruction

    clip = object()
    head, audio, tail = build_prompt("gemma4", task_instruction("transcribe", "English"), clip)
    assert head == "<|turn>user\n" and audio is clip
    assert tail.startswith("Transcribe the following speech segment in English")
    assert tail.endswith("<turn|>\n<|turn>model\n")
    head, _, tail = build_prompt("gemma3n", "Transcribe.", clip)
    assert (head, tail) == ("<start_of_turn>user\n", "Transcribe.<end_of_turn>\n<start_of_turn>model\n")
    assert "into French" in task_instruction("translate", "English", "French")
    assert task_instruction("transcribe", "de-DE") == task_instruction("transcribe", "German")
    assert "in Klingon" in task_instruction("transcribe", "Klingon")


def test_split_audio_cuts_at_quiet_points_within_30_s():
    from edge_runtime.audio.gemma_audio import split_audio

    loud = chirp(70.0, amp=0.5)
    loud[int(27.5 * SR) : int(27.6 * SR)] = 0.0  # a pause just before the 30 s limit
    pieces = split_audio(loud, SR)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(loud)
    assert all(end - begin <= 30 * SR for begin, end in pieces)
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
    assert 27.5 * SR <= pieces[0][1] <= 27.6 * SR
    # no sliver left for the last piece
    pieces = split_audio(chirp(30.01), SR)
    assert len(pieces) == 2 and pieces[1][1] - pieces[1][0] >= SR // 2
    assert split_audio(chirp(1.0), SR) == [(0, SR)]


# --------------------------------------------------------------------------- bad input


def test_sample_rate_mismatch_and_bad_audio(engine, text_gguf, mmproj):
    from edge_runtime.backend.core import LlamaModel
    from edge_runtime.backend.mtmd import MultimodalProjector

    with pytest.raises(AudioError, match="16000 Hz"):
        engine.transcribe_text(chirp(1.0), sample_rate=44100)
    with pytest.raises(AudioError, match="mono"):
        engine.transcribe_text(np.zeros((2, SR), dtype=np.float32))
    with pytest.raises(AudioError, match="too short"):
        engine.transcribe_text(np.zeros(10, dtype=np.float32))
    with LlamaModel.load(text_gguf) as model, MultimodalProjector(mmproj("f16"), model) as proj:
        with pytest.raises(AudioError, match="needs 16000 Hz"):
            proj.encode_audio(chirp(1.0), 48000)
        with pytest.raises(AudioError, match="NaN"):
            proj.encode_audio(np.full(SR, np.nan, dtype=np.float32), SR)
        with pytest.raises(AudioError, match="too short"):
            proj.encode_audio(np.zeros(1, dtype=np.float32), SR)  # mtmd would abort the process
        # a 1-sample tail after mtmd's 30 s boundary: padded, not an error
        assert proj.encode_audio(np.zeros(30 * SR + 1, dtype=np.float32), SR).shape[0] == 751


def _write_gguf(path: Path, arch: str, kv: dict) -> Path:
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    for key, value in kv.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, value)
    writer.add_tensor("dummy", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_projector_without_audio_is_refused(text_gguf, workdir):
    from edge_runtime.audio.gemma_audio import GemmaSpeechEngine
    from edge_runtime.backend.core import LlamaModel
    from edge_runtime.backend.mtmd import MultimodalProjector

    vision_only = _write_gguf(workdir / "vision-only.gguf", "clip", {
        "clip.has_vision_encoder": True, "clip.projector_type": "gemma4v", "clip.vision.projection_dim": 64,
    })
    with LlamaModel.load(text_gguf) as model:
        with pytest.raises(UnsupportedModelError, match="has no audio encoder"):
            MultimodalProjector(vision_only, model)
    with pytest.raises(UnsupportedModelError, match="has no audio encoder"):
        GemmaSpeechEngine(text_gguf, vision_only)
    gemma3n = _write_gguf(workdir / "gemma3n-mmproj.gguf", "clip", {
        "clip.has_vision_encoder": True, "clip.has_audio_encoder": True, "clip.vision.projector_type": "gemma3nv",
        "clip.audio.projector_type": "gemma3na", "clip.audio.projection_dim": 64,
    })
    with LlamaModel.load(text_gguf) as model:
        with pytest.raises(UnsupportedModelError, match="Gemma 3n projector.*not its audio encoder"):
            MultimodalProjector(gemma3n, model)


def test_missing_files_and_wrong_models(text_gguf, mmproj, workdir, default_model_path):
    from edge_runtime.audio.gemma_audio import GemmaSpeechEngine

    with pytest.raises(ModelNotFoundError):
        GemmaSpeechEngine(workdir / "missing.gguf", mmproj("f16"))
    with pytest.raises(ModelNotFoundError):
        GemmaSpeechEngine(text_gguf, workdir / "missing-mmproj.gguf")
    # Gemma 3 has no audio encoder at all
    with pytest.raises(UnsupportedModelError, match="needs Gemma 4 or Gemma 3n E2B/E4B"):
        GemmaSpeechEngine(default_model_path, mmproj("f16"))
    # Gemma 3n: refused with the reason (its audio tower does not run in this llama.cpp)
    g3n = _write_gguf(workdir / "gemma3n-header.gguf", "gemma3n", {"gemma3n.block_count": 1})
    with pytest.raises(UnsupportedModelError, match="Gemma 3n.*audio encoder does not run in llama.cpp's mtmd.*audio.onnx"):
        GemmaSpeechEngine(g3n, mmproj("f16"))


def test_convert_mmproj_command(checkpoint, workdir, capsys):
    from edge_runtime.cli import main

    out = workdir / "cli-mmproj.gguf"
    assert main(["convert-mmproj", str(checkpoint), "-o", str(out), "--outtype", "q8_0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["path"] == str(out) and result["outtype"] == "q8_0" and out.stat().st_size == result["size_bytes"]
    meta, tensors = _read(out)
    assert meta["clip.audio.projector_type"] == "gemma4a"
    assert tensors["a.blk.0.attn_q.weight"].tensor_type.name == "Q8_0"
