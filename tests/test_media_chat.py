"""Media in conversations: a 30-turn chat at n_ctx 1024 with images (tiny Gemma 3 with a SigLIP tower) and
clips (tiny Gemma 4 with a conformer) in several turns, through our converters and the real llama.cpp/mtmd:
the window never overflows, media turns are shifted out whole, and every turn after a media turn reuses the
cache (media identified by their content) and evaluates only its new positions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convert_support import converted, copy_with_metadata, tiny_gemma3_vision_checkpoint
from gemma4_tiny import build_tiny_gemma4
from test_gemma_audio import SR, chirp

from edge_runtime import Audio, GenerationSettings, Image, load_model
from edge_runtime.chat import ChatSession
from edge_runtime.chat_format import Message
from edge_runtime.errors import ContextSizeError, InvalidArgumentError, InvalidModelError, UnsupportedModelError

pytest.importorskip("torch")
pytest.importorskip("transformers")

RNG = np.random.default_rng(5)
IMAGES = [RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]


@pytest.fixture(scope="module")
def vision_files(tmp_path_factory):
    from edge_runtime.conversion.mmproj import convert_mmproj

    checkpoint = tiny_gemma3_vision_checkpoint(tmp_path_factory, max_positions=2048)
    mmproj = convert_mmproj(checkpoint, tmp_path_factory.mktemp("chat_media") / "mmproj.gguf", "f32", progress=False)
    return converted(tmp_path_factory, checkpoint, "f32"), mmproj


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    from edge_runtime.conversion import convert_checkpoint
    from edge_runtime.conversion.mmproj import convert_mmproj

    work = tmp_path_factory.mktemp("chat_audio")
    checkpoint = build_tiny_gemma4(work / "tiny-gemma4")
    text = convert_checkpoint(checkpoint, work / "text.gguf", "f32", progress=False).path
    return text, convert_mmproj(checkpoint, work / "mmproj.gguf", "f32", progress=False)


def media_positions(model) -> int:
    return sum(1 for k in model.generator.cache.tokens if k < 0)


def span_positions(model, item) -> int:
    (start, end), = model.plan([item, "x"]).span_ranges()
    return end - start


def run_chat(model, make_media, n_turns: int = 30) -> list:
    chat = ChatSession(model, "Be brief.", settings=GenerationSettings(temperature=0, max_tokens=8))
    results = []
    previous = None
    unrepeated = unrepeated_generation_prompt(model)
    for turn in range(n_turns):
        text = (f"Turn {turn}: here is a fairly long question about item number {turn * 13}, which I would like "
                f"you to compare with item number {turn * 17} and then explain in a few words, please.")
        media = make_media(turn)
        parts = [media, text] if media is not None else [text]
        res = chat.ask(parts)
        new_turn = len(chat._tokenize([Message.of_parts("user", parts)]))  # its positions (plus a BOS)
        m = res.metrics
        assert res.finish_reason in ("stop", "length")
        assert res.window_tokens + m.generated_tokens <= model.n_ctx  # never overflows
        window = chat.window_messages
        in_window = sum(len(msg.media) for msg in window)
        # media in the window are there whole: every span's positions, nothing cut
        assert media_positions(model) == sum(span_positions(model, m) for msg in window for m in msg.media), turn
        if previous is not None and previous_had_media_in_window(previous):
            assert m.reused_tokens > 0, (turn, m)
            if res.dropped_messages == 0:
                # the whole previous prompt is reused but for the part of the generation prompt that the history
                # does not repeat (Gemma 4's empty thought): only the new turn is evaluated
                assert m.reused_tokens >= previous.window_tokens - unrepeated, (turn, m, previous.window_tokens)
                # (and where the generation prompt was not kept, the previous reply after it)
                slack = 8 + (2 * previous.metrics.generated_tokens if unrepeated else 0)
                assert m.evaluated_prompt_tokens <= new_turn + slack, (turn, m, new_turn)
                assert m.media_encode_s == 0.0 or media is not None  # the earlier media are not encoded again
        previous = res
        previous.media_in_window = in_window
        results.append(res)
    assert sum(r.dropped_messages for r in results) >= 10  # the window did shift
    sent = sum(1 for t in range(n_turns) if make_media(t) is not None)
    assert sent - in_window >= 2  # media turns were shifted out (whole: checked on every turn)
    assert any(r.metrics.media_encode_s > 0 for r in results)
    return results


def unrepeated_generation_prompt(model) -> int:
    """Tokens of the generation prompt that the rendered history does not keep."""
    fmt = model.chat_format
    gen = fmt.render([Message("user", "x")], add_generation_prompt=True)
    hist = fmt.render([Message("user", "x"), Message("assistant", "y")], add_generation_prompt=False)
    i = 0
    while i < min(len(gen), len(hist)) and gen[i] == hist[i]:
        i += 1
    return len(model.tokenize(gen[i:], add_bos=False)) if i < len(gen) else 0


def previous_had_media_in_window(res) -> bool:
    return getattr(res, "media_in_window", 0) > 0


def test_30_turn_chat_with_images(vision_files):
    text_gguf, mmproj = vision_files
    with load_model(text_gguf, n_ctx=1024, flash_attn=False, mmproj=mmproj) as model:
        run_chat(model, lambda t: Image(IMAGES[t % 3]) if t % 4 == 0 else None)


def test_30_turn_chat_with_images_and_clips(audio_files):
    """Gemma 4's projector holds both towers: images and clips in several turns of one conversation."""
    text_gguf, mmproj = audio_files
    clips = [Audio(chirp(1.0) * (1 + k), sample_rate=SR) for k in range(2)]
    images = [Image(IMAGES[k]) for k in range(2)]

    def media(turn: int):
        if turn % 5 == 1:
            return clips[turn % 2]
        if turn % 7 == 3:
            return images[turn % 2]
        return None

    with load_model(text_gguf, n_ctx=1024, flash_attn=False, mmproj=mmproj) as model:
        assert span_positions(model, images[0]) != span_positions(model, clips[0])
        run_chat(model, media)


def test_a_media_item_too_big_for_the_window_is_refused(audio_files):
    text_gguf, mmproj = audio_files
    with load_model(text_gguf, n_ctx=256, flash_attn=False, mmproj=mmproj) as model:
        chat = ChatSession(model, settings=GenerationSettings(temperature=0, max_tokens=8))
        chat.ask("Hello there")
        with pytest.raises(ContextSizeError, match=r"takes \d+ positions.*--ctx \d+"):
            chat.ask([Audio(chirp(12.0), sample_rate=SR), "What is this?"])  # 300 audio positions
        assert [m.role for m in chat.messages] == ["user", "assistant"]  # the refused message is not kept
        assert chat.ask("And now?").finish_reason in ("stop", "length")


def test_media_errors(vision_files, audio_files, tmp_path):
    text_gguf, mmproj = vision_files
    audio_text, audio_mmproj = audio_files
    with load_model(text_gguf, n_ctx=512, flash_attn=False) as model:
        chat = ChatSession(model)
        with pytest.raises(InvalidArgumentError, match="no projector is loaded: pass --mmproj"):
            chat.ask([Image(IMAGES[0]), "Hi"])
        with pytest.raises(InvalidArgumentError, match="must be text, Image or Audio"):
            chat.ask([Image(IMAGES[0]), 5])
    with load_model(text_gguf, n_ctx=512, flash_attn=False, mmproj=mmproj) as model:
        with pytest.raises(UnsupportedModelError, match="cannot hear audio"):
            ChatSession(model).ask([Audio(chirp(1.0), sample_rate=SR), "Hi"])
        bad = tmp_path / "broken.png"
        bad.write_bytes(b"\x89PNG but not really")
        chat = ChatSession(model, settings=GenerationSettings(temperature=0, max_tokens=2))
        chat.ask("Hello")
        with pytest.raises(InvalidArgumentError, match="not an image or audio file"):
            chat.ask([Image(bad), "Hi"])
        # the message that could not be sent is not kept: the conversation goes on
        assert [m.role for m in chat.messages] == ["user", "assistant"]
        assert chat.ask("Still there?").finish_reason in ("stop", "length")
    # a projector made for another model: another generation, another width
    with pytest.raises(InvalidModelError, match="is a gemma4 projector .gemma4[av]. but the model is gemma3"):
        load_model(text_gguf, n_ctx=512, flash_attn=False, mmproj=audio_mmproj)
    narrow = tmp_path / "narrow.gguf"
    copy_with_metadata(audio_mmproj, narrow, {"clip.audio.projection_dim": 32})
    with pytest.raises(InvalidModelError, match="projects to 32-wide embeddings but the model's input is 64 wide"):
        load_model(audio_text, n_ctx=512, flash_attn=False, mmproj=narrow)
    with load_model(text_gguf, n_ctx=512, flash_attn=False, mmproj=mmproj) as model:
        chat = ChatSession(model)
        chat.load([Message("user", "no slot", media=(Image(IMAGES[0]),))])
        with pytest.raises(InvalidArgumentError, match="places for them"):
            chat.ask(None)


def test_cli_chat_attaches_media(vision_files, tmp_path):
    import subprocess
    import sys

    from test_media_prompts import encode_png

    text_gguf, mmproj = vision_files
    png = tmp_path / "photo.png"
    png.write_bytes(encode_png(IMAGES[1]))
    script = f"/image {tmp_path / 'missing.png'}\n/image {png}\nWhat is it?\nAnd the colours?\n"
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "chat", "-m", str(text_gguf), "--mmproj", str(mmproj),
                           "--ctx", "512", "--temperature", "0", "-n", "6", "--json", "--no-flash-attn"],
                          input=script, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "no such file" in proc.stderr
    replies = [json.loads(line)["text"] for line in proc.stdout.splitlines()]
    with load_model(text_gguf, n_ctx=512, flash_attn=False, mmproj=mmproj) as model:
        chat = ChatSession(model, settings=GenerationSettings(temperature=0, max_tokens=6))
        first = chat.ask([Image(png), "What is it?"])
        second = chat.ask("And the colours?")
        assert second.metrics.reused_tokens >= first.window_tokens - 1  # the image's turn was reused
    assert replies == [first.text, second.text]
