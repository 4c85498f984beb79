"""Several API keys from a file that stores only their hashes, each with its own limits (requests and tokens
per minute, requests at once): 429 with Retry-After past a limit, other keys untouched; the official client."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import openai
import pytest

from edge_runtime import load_model
from edge_runtime.errors import InvalidArgumentError
from edge_runtime.server import OpenAIServer, ServerSettings
from edge_runtime.server.keys import add_key, load_keys

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    alice = add_key(path, "alice", rpm=2)
    bob = add_key(path, "bob", tpm=40)
    carol = add_key(path, "carol", concurrent=1)
    return path, alice, bob, carol


@pytest.fixture(scope="module")
def server(default_model_path, keys):
    with load_model(default_model_path, n_ctx=512) as model, \
            OpenAIServer(model, ServerSettings(port=0, keys=load_keys(keys[0]), asr="off")) as srv:
        srv.start()
        yield srv


def client(server, key):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def ask(c, n=4):
    return c.completions.create(model="m", prompt="January, February,", max_tokens=n, temperature=0)


def test_the_file_keeps_only_hashes(keys):
    path, alice, bob, carol = keys
    text = path.read_text()
    assert alice not in text and bob not in text and carol not in text
    assert (path.stat().st_mode & 0o777) == 0o600
    assert {k.id for k in load_keys(path).values()} == {"alice", "bob", "carol"}
    with pytest.raises(InvalidArgumentError, match="already has a key 'alice'"):
        add_key(path, "alice")


def test_requests_per_minute(server, keys):
    a = client(server, keys[1])
    ask(a)
    ask(a)
    with pytest.raises(openai.RateLimitError) as err:
        ask(a)
    assert "alice" in str(err.value) and 1 <= int(err.value.response.headers["Retry-After"]) <= 61
    ask(client(server, keys[3]))  # another key is not affected


def test_tokens_per_minute(server, keys):
    b = client(server, keys[2])
    first = ask(b, 40)  # prompt + 40 generated tokens: over bob's 40 per minute once it is done
    assert first.usage.total_tokens > 40
    with pytest.raises(openai.RateLimitError, match="tokens in the last minute"):
        ask(b)


def test_requests_at_once(server, keys):
    c = client(server, keys[3])
    started = threading.Event()
    errors = []

    def long_stream():
        stream = c.completions.create(model="m", prompt="Once upon a time", max_tokens=200, temperature=0,
                                      stream=True)
        for _ in stream:
            started.set()

    t = threading.Thread(target=long_stream)
    t.start()
    assert started.wait(60)
    try:
        ask(c)
    except openai.RateLimitError as exc:
        errors.append(exc)
    t.join()
    assert errors and "carol" in str(errors[0]) and "requests running" in str(errors[0])
    ask(c)  # once the stream is done, carol may ask again


def test_wrong_key_and_cli(server, keys, tmp_path):
    with pytest.raises(openai.AuthenticationError):
        ask(client(server, "er-not-a-key"))
    out = subprocess.run([sys.executable, "-m", "edge_runtime", "keys", "add", str(tmp_path / "k.json"), "--id", "app",
                          "--rpm", "10"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip().startswith("er-")
    stored = json.loads((tmp_path / "k.json").read_text())["keys"][0]
    assert stored["id"] == "app" and stored["rpm"] == 10 and "sha256" in stored
