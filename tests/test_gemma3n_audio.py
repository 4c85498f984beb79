"""Gemma 3n hears: a tiny random Gemma 3n with an audio tower (transformers), its audio encoder written as ONNX by
our torch-free converter and run in onnxruntime, its text model converted to GGUF and run by llama.cpp, fed the
encoder's rows as input embeddings. transformers is the reference for the encoder's output, the prompt layout,
the logits and the greedy tokens."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from audio_speech import speak
from batch_support import same_logits
from convert_support import cache_dir, mark_done, tiny_checkpoint
from gemma3n_tiny import build_tiny_gemma3n, load_tiny_gemma3n

from edge_runtime import Audio, GenerationSettings, load_model
from edge_runtime.chat import ChatSession
from edge_runtime.errors import (AudioError, ContextSizeError, ConversionError, InvalidArgumentError,
                                 InvalidModelError, UnsupportedModelError)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

SR = 16000
SOFT, END_OF_AUDIO, AUDIO_SOFT = 188, 262272, 262273


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path, done = cache_dir(tmp_path_factory, "tiny-gemma3n-audio")
    if not done:
        build_tiny_gemma3n(path, tiny_checkpoint(tmp_path_factory, "gemma3n"))
        mark_done(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, checkpoint):
    from edge_runtime.conversion import convert_checkpoint
    from edge_runtime.conversion.gemma3n_audio import convert_audio_encoder

    work = tmp_path_factory.mktemp("gemma3n_audio")
    text = convert_checkpoint(checkpoint, work / "text.gguf", "f32", progress=False).path
    return text, convert_audio_encoder(checkpoint, work / "audio.onnx", "f32", progress=False)


@pytest.fixture(scope="module")
def hf(checkpoint):
    return load_tiny_gemma3n(checkpoint)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return speak("Hello, my name is John.", tmp_path_factory.mktemp("speech"))


def hf_audio_rows(hf, mel: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """What transformers puts at a clip's audio positions: get_audio_features, padding rows where invalid."""
    with torch.no_grad():
        out = hf.model.get_audio_features(torch.tensor(mel[None]), ~torch.tensor(valid[None]))
        pad = hf.model.embed_audio(input_ids=torch.tensor([[262399]]))[0, 0]
        return torch.where(out.audio_mel_mask[..., None], pad, out.pooler_output)[0].numpy()


def run_onnx(path, mel, valid):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_features": mel[None], "input_features_mask": valid[None]})


def rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_encoder_equals_transformers(checkpoint, files, hf, speech, tmp_path):
    from edge_runtime.audio.gemma3n_features import Gemma3nFeatureExtractor
    from edge_runtime.conversion.gemma3n_audio import convert_audio_encoder

    _, f32 = files
    fe = Gemma3nFeatureExtractor()
    noise = (np.random.default_rng(1).standard_normal(30 * SR) * 0.1).astype(np.float32)
    cases = [fe.clip(speech), fe.clip(noise)]
    padded = fe.clip(speech)  # as in a batch: trailing frames marked invalid
    padded.mask[-40:] = False
    cases.append(padded)
    outs = {"f32": f32, **{t: convert_audio_encoder(checkpoint, tmp_path / t / "audio.onnx", t, progress=False)
                           for t in ("f16", "int8")}}
    bounds = {"f32": 1e-4, "f16": 5e-3, "int8": 0.1}
    for outtype, path in outs.items():
        for feats in cases:
            want = hf_audio_rows(hf, feats.mel, feats.mask)
            got, special = run_onnx(path, feats.mel, feats.mask)
            assert got[0].shape == want.shape
            assert rel_err(got[0], want) < bounds[outtype], outtype
        with torch.no_grad():
            hard = hf.model.embed_audio(input_ids=torch.tensor([[END_OF_AUDIO, 262399]]))[0].numpy()
        assert rel_err(special, hard) < bounds[outtype]
    assert run_onnx(f32, cases[1].mel, cases[1].mask)[0].shape[1] == SOFT  # 30 s -> 188 positions
    # f32/f16 weights sit in one data file beside the model; int8 is one file; no temporary files are left
    assert sorted(p.name for p in f32.parent.iterdir() if "audio" in p.name)[0] == "audio.onnx"
    assert len(list(f32.parent.glob("audio.onnx.*.data"))) == 1
    assert [p.name for p in (tmp_path / "int8").iterdir()] == ["audio.onnx"]
    assert not [p for p in tmp_path.rglob(".*")]
    # int8: every conformer matrix quantized; the first and last projections kept in f32
    import onnx

    int8 = onnx.load(str(outs["int8"]))
    types = {t.name: t.data_type for t in int8.graph.initializer}
    assert types["input_proj"] == types["embedding_projection"] == onnx.TensorProto.FLOAT
    quantized = [n for n in types if n.endswith("_quantized") and types[n] == onnx.TensorProto.INT8]
    layers = json.loads((checkpoint / "config.json").read_text())["audio_config"]["conf_num_hidden_layers"]
    assert len(quantized) == 10 * layers  # per block: q, k, v, out, conv start and end, two FFNs' up and down


def test_prompt_with_speech_equals_transformers(checkpoint, files, hf, speech):
    text_gguf, encoder = files
    n_new = 8
    with load_model(text_gguf, n_ctx=512, flash_attn=False, mmproj=encoder) as model:
        result = model.generate(["Transcribe:", Audio(speech, sample_rate=SR), "Text:"], temperature=0,
                                max_tokens=n_new, stop_tokens=())
        layout = [AUDIO_SOFT if k < 0 else k for k in model.generator.cache.tokens[: result.metrics.prompt_tokens]]
        assert result.metrics.media_encode_s > 0
        model.generate(["Transcribe:", Audio(speech, sample_rate=SR), "Text:"], max_tokens=0)
        logits = model.ctx.logits(-1)
    tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
    ids = (tok("Transcribe:\n\n<start_of_audio>")["input_ids"] + [AUDIO_SOFT] * SOFT + [END_OF_AUDIO]
           + tok("\n\nText:", add_special_tokens=False)["input_ids"])
    layout[layout.index(AUDIO_SOFT) + SOFT] = END_OF_AUDIO  # our <end_of_audio> is the span's last row
    assert layout == ids  # position for position

    feats = transformers.Gemma3nAudioFeatureExtractor()([speech], sampling_rate=SR, return_tensors="pt")
    full = torch.tensor([ids + result.tokens])
    with torch.no_grad():
        ref = hf(input_ids=full, attention_mask=torch.ones_like(full), input_features=feats["input_features"],
                 input_features_mask=feats["input_features_mask"]).logits[0, len(ids) - 1:].numpy()
    assert np.abs(logits - ref[0]).max() < 0.02  # the f16 KV cache's rounding, on logits of about 6
    # greedy tokens: equal, up to the first step where transformers' own top two are closer than rounding
    n_checked = 0
    for step, token in enumerate(result.tokens):
        top2 = np.sort(ref[step])[-2:]
        if top2[1] - top2[0] < 0.02:
            break
        assert token == int(ref[step].argmax()), (step, result.tokens)
        n_checked += 1
    assert n_checked >= 2


def test_cli_generate_with_audio_and_convert(checkpoint, files, speech, tmp_path):
    import soundfile as sf

    text_gguf, encoder = files
    wav = tmp_path / "speech.wav"
    sf.write(wav, speech, SR)
    out = tmp_path / "enc" / "audio.onnx"
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "convert-mmproj", str(checkpoint), "-o", str(out),
                           "--outtype", "int8", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["outtype"] == "int8" and info["files"] == [str(out)] and info["size_bytes"] == out.stat().st_size
    cmd = [sys.executable, "-m", "edge_runtime", "generate", "Transcribe:<__media__>Text:", "--audio", str(wav),
           "--mmproj", str(encoder), "-m", str(text_gguf), "--ctx", "512", "--temperature", "0", "-n", "6",
           "--json", "--no-flash-attn"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["metrics"]["media_encode_s"] > 0
    with load_model(text_gguf, n_ctx=512, flash_attn=False, mmproj=encoder) as model:
        want = model.generate(["Transcribe:", Audio(wav), "Text:"], temperature=0, max_tokens=6)
    assert got["tokens"] == want.tokens
    # GGUF-only and ONNX-only types are refused by name
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "convert-mmproj", str(checkpoint), "-o",
                           str(tmp_path / "x.onnx"), "--outtype", "q8_0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "ONNX encoder takes f32, f16, int8" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_long_audio_is_split_into_30s_clips(files, speech):
    text_gguf, encoder = files
    long = np.concatenate([speech, np.zeros(65 * SR - speech.size, np.float32)])
    with load_model(text_gguf, n_ctx=1024, flash_attn=False, mmproj=encoder) as model:
        plan = model.plan(["Hi", Audio(long, sample_rate=SR), "ok"])
        spans = plan.span_ranges()
        assert [e - s for s, e in spans] == [SOFT + 1] * 3  # 30 + 30 + 5 s
        keys = plan.keys()
        start = model.llama.token_id("<start_of_audio>")
        assert [keys[s - 1] for s, _ in spans] == [start] * 3  # each clip opens with <start_of_audio>
        assert len({tuple(keys[s:e]) for s, e in spans}) == 3  # distinct keys: no false reuse between clips
        result = model.generate(["Hi", Audio(long, sample_rate=SR), "ok"], temperature=0, max_tokens=2)
        assert result.metrics.prompt_tokens == len(plan)


def test_chat_reuses_audio_turns(files, speech):
    text_gguf, encoder = files
    with load_model(text_gguf, n_ctx=1024, flash_attn=False, mmproj=encoder) as model:
        chat = ChatSession(model, settings=GenerationSettings(temperature=0, max_tokens=4))
        first = chat.ask([Audio(speech, sample_rate=SR), "What was said?"])
        assert first.metrics.media_encode_s > 0
        for turn in range(3):
            res = chat.ask(f"And then, part {turn}?")
            assert res.metrics.media_encode_s == 0.0  # the clip is neither encoded nor evaluated again
            assert res.metrics.reused_tokens >= SOFT + 1 and res.metrics.evaluated_prompt_tokens < 40


def test_clips_in_batched_prompts_give_the_logits_of_one_at_a_time(files, speech, sampled_logits):
    """`serve` decodes several streams together: Gemma 3n clips (encoder rows and the `<end_of_audio>` row
    fed as embeddings, each span on its own) beside text streams see what they see one at a time."""
    text_gguf, encoder = files
    other = np.ascontiguousarray(speech[::-1])  # another clip of the same length
    prompts = [[Audio(speech, sample_rate=SR), "What was said?"], "Once upon a time",
               [Audio(other, sample_rate=SR), "What was said?"], "def fibonacci(n):"]
    settings = GenerationSettings(temperature=0, max_tokens=8)
    opts = dict(n_ctx=512, flash_attn=False, mmproj=encoder)
    with load_model(text_gguf, parallel=4, **opts) as many, load_model(text_gguf, **opts) as one:
        batched = many.generate_many(prompts, settings)
        alone = [one.generate(p, settings) for p in prompts]
        assert many.generator.stats.most_streams >= 2 and batched[0].metrics.media_encode_s > 0
    assert [r.tokens for r in batched] == [r.tokens for r in alone]
    assert [r.metrics.prompt_tokens for r in batched] == [r.metrics.prompt_tokens for r in alone]
    same_logits(sampled_logits, len(prompts), prompts, 5e-4)  # logits about 7; measured 8e-5 at most
    assert abs(np.array(sampled_logits[0])[0] - np.array(sampled_logits[2])[0]).max() > 2e-3  # the clip shows


def test_errors(checkpoint, files, tmp_path, default_model_path, speech):
    from edge_runtime.conversion.gemma3n_audio import convert_audio_encoder

    text_gguf, encoder = files
    with pytest.raises(UnsupportedModelError, match="Gemma 3n's audio encoder but the model is gemma3"):
        load_model(default_model_path, n_ctx=256, mmproj=encoder)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all")
    with pytest.raises(InvalidModelError, match="not a readable ONNX model"):
        load_model(text_gguf, n_ctx=256, mmproj=broken)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "audio.onnx").write_bytes(encoder.read_bytes())  # moved without its data file
    with pytest.raises(InvalidModelError, match=r"needs its data file \(audio.onnx.<tag>.data\) beside it"):
        load_model(text_gguf, n_ctx=256, mmproj=alone / "audio.onnx")
    with pytest.raises(InvalidArgumentError, match="audio encoder not found"):
        load_model(text_gguf, n_ctx=256, mmproj=tmp_path / "missing.onnx")
    with load_model(text_gguf, n_ctx=256, flash_attn=False, mmproj=encoder) as model:
        with pytest.raises(AudioError, match="audio too short"):
            model.generate([Audio(np.zeros(100, np.float32), sample_rate=SR), "x"], max_tokens=1)
        with pytest.raises(UnsupportedModelError, match="cannot see images"):
            from edge_runtime import Image

            model.generate([Image(np.zeros((8, 8, 3), np.uint8)), "x"], max_tokens=1)
        bad = tmp_path / "bad.wav"
        bad.write_bytes(b"RIFF....WAVEnot really")
        with pytest.raises(InvalidArgumentError, match="not an audio file this runtime can read"):
            model.generate([Audio(bad), "x"], max_tokens=1)
        with pytest.raises(ContextSizeError, match=r"takes 576 positions with its media.*--ctx 1024"):
            model.generate([Audio(np.zeros(65 * SR, np.float32), sample_rate=SR), "x"], max_tokens=1)
    not_3n = tmp_path / "gemma3"
    not_3n.mkdir()
    (not_3n / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    with pytest.raises(ConversionError, match="not a Gemma 3n checkpoint with an audio tower"):
        convert_audio_encoder(not_3n, tmp_path / "x.onnx", progress=False)
    with pytest.raises(ConversionError, match="unknown outtype"):
        convert_audio_encoder(checkpoint, tmp_path / "x.onnx", "q4", progress=False)


def test_transcribe_with_the_gemma_engine(files, speech, tmp_path):
    """`transcribe --engine gemma` (and auto, given the GGUF) runs Gemma 3n: the same greedy text as the library
    gives for Gemma 3n's transcription turn; --translate-to asks Gemma itself."""
    import soundfile as sf

    from edge_runtime.audio.gemma_audio import GemmaSpeechEngine, build_prompt, task_instruction

    text_gguf, encoder = files
    wav = tmp_path / "speech.wav"
    sf.write(wav, speech, SR)
    with load_model(text_gguf, n_ctx=1024, mmproj=encoder) as model:
        stop = (model.llama.token_id("<end_of_turn>"), model.llama.token_id("<start_of_turn>"))
        prompt = build_prompt("gemma3n", task_instruction("transcribe"), Audio(speech, sample_rate=SR))
        want = model.generate(prompt, temperature=0, max_tokens=12, stop_tokens=stop).text.strip()
    from edge_runtime.audio.gemma_audio import GemmaAudioSettings

    with GemmaSpeechEngine(text_gguf, encoder, GemmaAudioSettings(max_new_tokens=12)) as engine:
        assert engine.transcribe_text(speech) == want and want
        rows = engine.audio_embeddings(speech)
        assert rows.shape == (SOFT + 1, engine._model.llama.n_embd_inp)
    for engine_name in ("gemma", "auto"):
        proc = subprocess.run([sys.executable, "-m", "edge_runtime", "transcribe", str(wav), "--engine", engine_name,
                               "--model", str(text_gguf), "--mmproj", str(encoder), "--format", "json"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["text"].strip()
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "transcribe", str(wav), "--engine", "gemma",
                           "--model", str(text_gguf), "--mmproj", str(encoder), "--translate-to", "French", "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 1), proc.stderr  # 1: a random model's non-translation


def test_listen_with_gemma3n(files, speech, tmp_path):
    """The live path (`listen`, here replaying a file in real time) runs on Gemma 3n's ears too."""
    import soundfile as sf

    text_gguf, encoder = files
    wav = tmp_path / "live.wav"
    silence = np.zeros(SR, np.float32)
    sf.write(wav, np.concatenate([silence, speech, silence, silence]), SR)
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "listen", "--replay", str(wav), "--engine", "gemma",
                           "--model", str(text_gguf), "--mmproj", str(encoder)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    finals = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(finals) == 1 and finals[0].split("]", 1)[1].strip(), proc.stdout  # one utterance, transcribed


def test_assistant_with_gemma3n_ears(files, speech, tmp_path, default_model_path):
    """`assistant` hears through Gemma 3n (replayed speech, voice activity, the ONNX encoder) and answers with
    the text model: the line it prints after "you:" begins as the gemma engine's transcript of the clip."""
    import soundfile as sf

    from edge_runtime.audio.gemma_audio import GemmaAudioSettings, GemmaSpeechEngine

    text_gguf, encoder = files
    wav = tmp_path / "ask.wav"
    silence = np.zeros(SR, np.float32)
    sf.write(wav, np.concatenate([silence, speech, silence, silence]), SR)
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "assistant", "--replay", str(wav), "--engine",
                           "gemma", "--model", str(text_gguf), "--mmproj", str(encoder), "--text-model",
                           str(default_model_path), "--max-tokens", "8", "--temperature", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    heard = [line[len("you: "):] for line in lines if line.startswith("you: ")]
    answers = [line for line in lines if line.startswith("gemma: ")]
    assert len(heard) == 1 and heard[0].strip() and len(answers) == 1 and len(answers[0]) > len("gemma: "), proc.stdout
    with GemmaSpeechEngine(text_gguf, encoder, GemmaAudioSettings()) as engine:
        segment = engine.transcribe_text(speech)
    # the segment voice activity cut holds less silence than the whole clip: the random model's greedy text
    # agrees for its first ~20 words here, and parts later
    assert heard[0].split()[:3] == segment.split()[:3], (heard, segment)


def test_cancelled_media_prompt_leaves_the_model_usable(files, speech):
    """Cancelled while the clip's rows are being evaluated (the abort check fires inside llama.cpp): the turn ends
    "cancelled", the cache keeps only what llama.cpp stored, and the next call answers as a fresh model does."""
    from edge_runtime.generate import CancelToken

    text_gguf, encoder = files
    prompt = ["Transcribe:", Audio(speech, sample_rate=SR), "Text:"]
    with load_model(text_gguf, n_ctx=512, flash_attn=False, mmproj=encoder) as fresh:
        want = fresh.generate(prompt, temperature=0, max_tokens=6).tokens
    with load_model(text_gguf, n_ctx=512, flash_attn=False, mmproj=encoder) as model:
        model.generate("Transcribe: something else entirely", temperature=0, max_tokens=2)
        cancel = CancelToken()
        cancel.cancel()
        stopped = model.stream(prompt, temperature=0, max_tokens=6, cancel=cancel).consume()
        assert stopped.finish_reason == "cancelled" and not stopped.tokens
        again = model.generate(prompt, temperature=0, max_tokens=6)
        assert again.tokens == want
