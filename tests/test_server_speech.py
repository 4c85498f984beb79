"""/v1/audio/transcriptions and /translations through the official `openai` client: real espeak-ng speech,
real Whisper tiny.en, every response_format, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from audio_speech import SR, speak, wer
from edge_runtime import load_model
from edge_runtime.server import OpenAIServer, ServerSettings

openai = pytest.importorskip("openai")
sf = pytest.importorskip("soundfile")
pytest.importorskip("faster_whisper")

SAID = "Hello, my name is John and I live in London."
KEY = "speech-key"


@pytest.fixture(scope="module")
def served(default_model_path):
    with load_model(default_model_path, n_ctx=256) as model, \
            OpenAIServer(model, ServerSettings(port=0, api_key=KEY, asr="whisper")) as server:
        server.start()
        yield openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120), server


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("speech")
    audio = np.concatenate([np.zeros(SR // 2), speak(SAID, d), np.zeros(SR)]).astype(np.float32)
    path = d / "hello.wav"
    sf.write(path, audio, SR, subtype="PCM_16")
    flac = d / "hello.flac"
    sf.write(flac, audio, SR)
    return path, flac, len(audio) / SR


def test_transcription_formats(served, clip):
    client, _ = served
    wav, flac, seconds = clip
    with open(wav, "rb") as f:
        plain = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert wer(SAID, plain.text) < 0.2
    with open(flac, "rb") as f:  # any format the decoder reads
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
    assert wer(SAID, verbose.text) < 0.2 and verbose.duration == pytest.approx(seconds, abs=0.05)
    assert verbose.segments and 0.3 < verbose.segments[0].start < verbose.segments[-1].end <= seconds
    with open(wav, "rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    assert srt.startswith("1\n00:00:00,") and "-->" in srt and "London" in srt
    with open(wav, "rb") as f:
        vtt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    assert vtt.startswith("WEBVTT") and "00:00:00." in vtt
    with open(wav, "rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert wer(SAID, text) < 0.2


def test_errors_are_clear(served, clip, tmp_path):
    client, server = served
    wav = clip[0]
    with open(wav, "rb") as f, pytest.raises(openai.BadRequestError, match="English-only"):
        client.audio.translations.create(model="whisper-1", file=f)  # tiny.en cannot translate
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    with open(junk, "rb") as f, pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="whisper-1", file=f)
    with open(wav, "rb") as f, pytest.raises(openai.BadRequestError, match="response_format"):
        client.audio.transcriptions.create(model="whisper-1", file=f, response_format="docx")
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with open(wav, "rb") as f, pytest.raises(openai.AuthenticationError):
        wrong.audio.transcriptions.create(model="whisper-1", file=f)
    import urllib.request

    req = urllib.request.Request(server.url + "/v1/audio/transcriptions", data=b"x=1", method="POST",
                                 headers={"Authorization": f"Bearer {KEY}",
                                          "Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400 and b"`file`" in err.value.read()


def test_the_async_client_transcribes_and_gets_the_same_errors(served, clip):
    import asyncio

    _, server = served
    wav = clip[0].read_bytes()

    async def run():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120) as c:
            texts = await asyncio.gather(*(c.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
                                           for _ in range(2)))
            with pytest.raises(openai.BadRequestError, match="English-only"):
                await c.audio.translations.create(model="whisper-1", file=("a.wav", wav))
            return texts

    texts = asyncio.run(run())
    assert all(wer(SAID, t.text) < 0.2 for t in texts)
