"""Images and clips through the OpenAI-compatible server, sent by the official `openai` client: `image_url` data URLs
(tiny Gemma 3 with a SigLIP tower) and `input_audio` WAV (tiny Gemma 4 with a conformer), answered exactly as the
library answers the same message; refusals as clear JSON errors."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import openai
import pytest

from convert_support import converted, tiny_gemma3_vision_checkpoint
from gemma4_tiny import build_tiny_gemma4
from test_gemma_audio import SR, chirp
from test_media_prompts import encode_png

from edge_runtime import Audio, GenerationSettings, Image, load_model
from edge_runtime.chat import ChatSession
from edge_runtime.server import OpenAIServer, ServerSettings

pytest.importorskip("torch")
pytest.importorskip("transformers")
KEY = "media-key"
PNG = encode_png(np.random.default_rng(11).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest.fixture(scope="module")
def vision(tmp_path_factory):
    from edge_runtime.conversion.mmproj import convert_mmproj

    checkpoint = tiny_gemma3_vision_checkpoint(tmp_path_factory, max_positions=2048)
    media = tmp_path_factory.mktemp("served_media")
    mmproj = convert_mmproj(checkpoint, media / "mmproj.gguf", "f32", progress=False)
    (media / "photo.png").write_bytes(PNG)
    return converted(tmp_path_factory, checkpoint, "f32"), mmproj, media


@pytest.fixture(scope="module")
def vision_server(vision):
    text, mmproj, media = vision
    with load_model(text, n_ctx=1024, flash_attn=False, mmproj=mmproj) as model:
        with OpenAIServer(model, ServerSettings(port=0, api_key=KEY, max_tokens=16, media_dir=media)) as server:
            server.start()
            yield model, server


def library_reply(model, parts, n: int = 6) -> str:
    model.reset()
    return ChatSession(model, settings=GenerationSettings(temperature=0, max_tokens=n)).ask(parts).text


def test_image_url_data_and_media_dir(vision_server, vision):
    model, server = vision_server
    _, _, media = vision
    content = [{"type": "image_url", "image_url": {"url": data_url(PNG)}}, {"type": "text", "text": "What is it?"}]
    c = client(server)
    first = c.chat.completions.create(model="m", messages=[{"role": "user", "content": content}], max_tokens=6,
                                      temperature=0)
    again = c.chat.completions.create(model="m", messages=[{"role": "user", "content": content}], max_tokens=6,
                                      temperature=0)
    assert model.generator.last_reuse.reused >= first.usage.prompt_tokens - 1  # same image: its cells were reused
    local = [{"type": "image_url", "image_url": {"url": "photo.png"}}, {"type": "text", "text": "What is it?"}]
    from_file = c.chat.completions.create(model="m", messages=[{"role": "user", "content": local}], max_tokens=6,
                                          temperature=0)
    want = library_reply(model, [Image(PNG), "What is it?"])
    assert first.choices[0].message.content == again.choices[0].message.content == want
    assert from_file.choices[0].message.content == want
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="m", messages=[{"role": "user", "content": content}], max_tokens=6, temperature=0, stream=True))
    assert streamed == want

    async def with_async_client() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120) as ac:
            replies = await asyncio.gather(*(ac.chat.completions.create(
                model="m", messages=[{"role": "user", "content": body}], max_tokens=6, temperature=0)
                for body in (content, local)))
        return [r.choices[0].message.content for r in replies]

    assert asyncio.run(with_async_client()) == [want, want]


def test_media_refusals(vision_server, tmp_path):
    model, server = vision_server
    c = client(server)

    def refused(content, role="user", match=""):
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(model="m", messages=[{"role": role, "content": content}], max_tokens=2)
        assert match in err.value.body["message"], err.value.body
        return err.value

    refused([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}], match="does not fetch URLs")
    refused([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}], match="not valid base64")
    refused([{"type": "image_url", "image_url": {"url": "../../etc/passwd"}}], match="not a file inside")
    refused([{"type": "image_url", "image_url": {"url": data_url(b"not an image")}}],
            match="not an image or audio file")
    wav = io.BytesIO()
    import soundfile as sf

    sf.write(wav, chirp(1.0), SR, format="WAV")
    refused([{"type": "input_audio", "input_audio": {"data": base64.b64encode(wav.getvalue()).decode(),
                                                     "format": "wav"}}], match="cannot hear audio")
    refused([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}}], match="'wav' or 'mp3'")
    refused([{"type": "video_url", "video_url": {"url": "x"}}], match="not supported")
    # the server still answers afterwards
    assert c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=2).choices


def test_input_audio(tmp_path_factory):
    import soundfile as sf

    from edge_runtime.conversion import convert_checkpoint
    from edge_runtime.conversion.mmproj import convert_mmproj

    work = tmp_path_factory.mktemp("served_audio")
    checkpoint = build_tiny_gemma4(work / "tiny-gemma4")
    text = convert_checkpoint(checkpoint, work / "text.gguf", "f32", progress=False).path
    mmproj = convert_mmproj(checkpoint, work / "mmproj.gguf", "f32", progress=False)
    wav = io.BytesIO()
    sf.write(wav, chirp(1.5), SR, format="WAV")
    content = [{"type": "input_audio", "input_audio": {"data": base64.b64encode(wav.getvalue()).decode(),
                                                       "format": "wav"}},
               {"type": "text", "text": "What do you hear?"}]
    with load_model(text, n_ctx=1024, flash_attn=False, mmproj=mmproj) as model:
        with OpenAIServer(model, ServerSettings(port=0, api_key=KEY, max_tokens=16)) as server:
            server.start()
            got = client(server).chat.completions.create(model="m", messages=[{"role": "user", "content": content}],
                                                         max_tokens=6, temperature=0)
            # Gemma 4's one projector holds both towers: the same server sees too
            seen = client(server).chat.completions.create(model="m", max_tokens=4, temperature=0, messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(PNG)}}]}])

            async def heard_async():
                async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0,
                                              timeout=120) as ac:
                    return await ac.chat.completions.create(model="m", messages=[{"role": "user", "content": content}],
                                                            max_tokens=6, temperature=0)

            got_async = asyncio.run(heard_async())
        want = library_reply(model, [Audio(wav.getvalue()), "What do you hear?"])
        want_seen = library_reply(model, [Image(PNG)], n=4)
    assert got.choices[0].message.content == got_async.choices[0].message.content == want
    assert seen.choices[0].message.content == want_seen
