"""One model over two real llama.cpp RPC workers on 127.0.0.1: same tokens and logits as a local run, and
every failure (unreachable, other protocol version, wrong key, worker killed mid-generation) a clear error
with the caller alive."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

from convert_support import converted, tiny_checkpoint
from edge_runtime import load_model
from edge_runtime.errors import InvalidArgumentError, RpcError
from edge_runtime.rpc import RpcSettings
from edge_runtime.rpc.probe import probe
from edge_runtime.rpc.channel import new_key, read_key
from rpc_support import ROOT, Worker, need_rpc

PROMPT = "The three largest cities of France are"


@pytest.fixture(scope="module")
def workers():
    need_rpc()
    with Worker("--mem", "300") as a, Worker("--mem", "100") as b:
        yield a, b


def _rpc(workers, **kw) -> RpcSettings:
    return RpcSettings(tuple(w.endpoint for w in workers), **kw)


def test_default_model_over_two_workers_generates_the_local_tokens(workers, default_model_path):
    # Workers compute with llama.cpp's plain CPU kernels; locally, Q4_K weights are repacked for faster ones
    # whose rounding differs in the last bits (greedy text then parts after a few tokens): compare like with like.
    with load_model(default_model_path, n_ctx=512, repack=False) as local:
        want = local.generate(PROMPT, temperature=0, max_tokens=24)
    with load_model(default_model_path, n_ctx=512, rpc=_rpc(workers)) as remote:
        got = remote.generate(PROMPT, temperature=0, max_tokens=24)
        split = remote.rpc_split
    assert got.tokens == want.tokens and got.text == want.text
    # by declared memory (300 vs 100 MB), every layer on the workers
    assert [w["share"] for w in split["workers"]] == [0.75, 0.25]
    assert split["local_layers"] == 0 and sum(w["layers"] for w in split["workers"]) == 18


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_logits_bit_identical_to_local(workers, tmp_path_factory, outtype):
    gguf = converted(tmp_path_factory, tiny_checkpoint(tmp_path_factory, "gemma3"), outtype)
    with load_model(gguf, n_ctx=256) as local:
        tokens = local.tokenize(PROMPT)
        want = local.logits(tokens)
        greedy = local.generate(tokens, temperature=0, max_tokens=16).tokens
    with load_model(gguf, n_ctx=256, rpc=_rpc(workers, split=(1.0, 1.0))) as remote:
        got = remote.logits(tokens)
        assert remote.generate(tokens, temperature=0, max_tokens=16).tokens == greedy
        assert [w["layers"] for w in remote.rpc_split["workers"]] == [3, 1]  # llama.cpp counts the output layer in
    np.testing.assert_array_equal(got, want)


def test_a_chat_over_rpc(workers, default_model_path):
    from edge_runtime.chat import ChatSession

    with load_model(default_model_path, n_ctx=512, rpc=_rpc(workers)) as remote:
        chat = ChatSession(remote, settings=remote_settings())
        first = chat.ask("Name a colour.")
        second = chat.ask("And another one?")
    assert first.text.strip() and second.text.strip()
    assert second.metrics.reused_tokens > 0  # the child keeps the conversation's cache


def remote_settings():
    from edge_runtime.generate import GenerationSettings

    return GenerationSettings(temperature=0, max_tokens=12)


def test_unreachable_worker_is_a_clear_error(default_model_path):
    need_rpc()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RpcError, match=rf"cannot reach the RPC worker at 127.0.0.1:{port} .*rpc-worker"):
        load_model(default_model_path, rpc=RpcSettings((f"127.0.0.1:{port}",)))


def _fake_llama_rpc_server(version: tuple[int, int, int]) -> tuple[socket.socket, str]:
    """A stand-in for a stock llama.cpp rpc-server of another version: it answers HELLO as llama.cpp does."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                first = conn.recv(1)
                if first != b"\x0e":
                    continue  # llama.cpp closes on anything but HELLO
                size, = struct.unpack("<Q", conn.recv(8))
                conn.recv(size)
                conn.sendall(struct.pack("<Q", 28) + bytes(version) + bytes(25))
                while conn.recv(1) == b"\x0b":  # GET_DEVICE_MEMORY
                    size, = struct.unpack("<Q", conn.recv(8))
                    conn.recv(size)
                    conn.sendall(struct.pack("<QQQ", 16, 2**30, 2**31))

    threading.Thread(target=serve, daemon=True).start()
    return srv, f"127.0.0.1:{srv.getsockname()[1]}"


def test_another_protocol_version_is_refused_before_llama_cpp_sees_it(default_model_path):
    need_rpc()
    srv, endpoint = _fake_llama_rpc_server((8, 0, 0))
    with srv:
        with pytest.raises(RpcError, match=r"speaks protocol 8\.0\.0, this runtime 7\.0\.0.*same llama-cpp-python"):
            load_model(default_model_path, rpc=RpcSettings((endpoint,)))
    srv2, endpoint = _fake_llama_rpc_server((7, 0, 1))  # a newer patch is fine
    with srv2:
        info = probe(endpoint)
        assert (info.kind, info.proto, info.mem_bytes, info.auth) == ("llama.cpp", (7, 0, 1), 2**30, False)


def test_keys(tmp_path, default_model_path):
    need_rpc()
    key_file, other = tmp_path / "rpc.key", tmp_path / "other.key"
    new_key(key_file)
    new_key(other)
    assert (key_file.stat().st_mode & 0o777) == 0o600
    with Worker("--key-file", str(key_file)) as w:
        ep = (w.endpoint,)
        with pytest.raises(RpcError, match="requires a key: pass --rpc-key-file"):
            load_model(default_model_path, rpc=RpcSettings(ep))
        with pytest.raises(RpcError, match="refused the key"):
            load_model(default_model_path, rpc=RpcSettings(ep, key=read_key(other)))
        # a plain llama.cpp client (no handshake) is turned away by a keyed worker
        with socket.create_connection(("127.0.0.1", w.port)) as s:
            s.sendall(struct.pack("<BQ", 14, 24) + bytes(24))
            s.settimeout(5)
            try:
                assert s.recv(100) == b""  # closed without a HELLO answer
            except ConnectionResetError:
                pass
        with load_model(default_model_path, n_ctx=256, rpc=RpcSettings(ep, key=read_key(key_file))) as m:
            assert m.generate("Hello", temperature=0, max_tokens=4).tokens
    with Worker() as plain:  # a client holding a key will not talk to a worker that does not check it
        with pytest.raises(RpcError, match="does not ask for a key"):
            probe(plain.endpoint, read_key(key_file))
    with pytest.raises(InvalidArgumentError, match="at least 16"):
        (tmp_path / "short.key").write_text("abc\n")
        read_key(tmp_path / "short.key")


def test_worker_refuses_an_open_address_without_a_key():
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "rpc-worker", "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    assert "refusing to listen on 0.0.0.0 without a key" in proc.stderr and "Traceback" not in proc.stderr


def test_worker_killed_mid_generation_is_an_error_and_the_model_recovers(default_model_path):
    need_rpc()
    a, b = Worker(), Worker()
    try:
        with load_model(default_model_path, n_ctx=512, rpc=RpcSettings((a.endpoint, b.endpoint))) as m:
            stream = m.stream(PROMPT, temperature=0, max_tokens=200)
            pieces = []
            with pytest.raises(RpcError) as err:
                for piece in stream:
                    pieces.append(piece)
                    if len(pieces) == 3:
                        b.kill()
            assert len(pieces) >= 3
            assert f"the RPC worker at {b.endpoint} stopped answering during generation" in str(err.value)
            # this process lives on; with the worker back, the next request loads the model again
            b = Worker(port=b.port)
            again = m.generate(PROMPT, temperature=0, max_tokens=8)
            assert again.text.strip()
    finally:
        a.kill()
        b.kill()


def test_cli_generate_and_info_over_rpc(workers, default_model_path):
    eps = ",".join(w.endpoint for w in workers)
    run = lambda *a: subprocess.run([sys.executable, "-m", "edge_runtime", *a], capture_output=True, text=True,
                                    timeout=300, cwd=ROOT)
    gen = run("generate", PROMPT, "-n", "8", "--temperature", "0", "--rpc", eps, "--json", "-c", "256")
    assert gen.returncode == 0, gen.stderr
    info = run("info", "--rpc", eps, "--rpc-split", "1,1,2", "--json", "-c", "256")
    assert info.returncode == 0, info.stderr
    import json

    report = json.loads(info.stdout)
    assert report["rpc_available"] is True
    assert report["rpc"]["local_layers"] == 9 and [w["layers"] for w in report["rpc"]["workers"]] == [5, 4]
    bad = run("generate", "x", "--rpc", "nonsense")
    assert bad.returncode == 1 and "is not HOST:PORT" in bad.stderr


def test_server_over_rpc_with_the_openai_client_survives_a_lost_worker(default_model_path):
    import openai

    from edge_runtime.server import OpenAIServer, ServerSettings

    need_rpc()
    a, b = Worker(), Worker()
    try:
        with load_model(default_model_path, n_ctx=512, rpc=RpcSettings((a.endpoint, b.endpoint))) as model, \
                OpenAIServer(model, ServerSettings(port=0, max_tokens=16)) as server:
            server.start()
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
            ask = lambda: client.completions.create(model="m", prompt="January, February,", max_tokens=8,  # noqa: E731
                                                     temperature=0)
            assert "March" in ask().choices[0].text
            b.kill()
            with pytest.raises(openai.InternalServerError) as err:
                ask()
            assert err.value.status_code == 503 and f"RPC worker at {b.endpoint} stopped answering" in str(err.value)
            b = Worker(port=b.port)
            assert "March" in ask().choices[0].text  # the server lived on and reloaded the model
    finally:
        a.kill()
        b.kill()


def test_cli_chat_over_rpc(workers):
    eps = ",".join(w.endpoint for w in workers)
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "chat", "--rpc", eps, "--json", "-n", "6",
                           "--temperature", "0", "-c", "512"], input="Hello\nHow are you?\n", capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    import json

    turns = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(turns) == 2 and all(t["text"] for t in turns)
    assert turns[1]["metrics"]["reused_tokens"] > 0


def test_a_stream_left_unread_does_not_leak_into_the_next(workers, default_model_path):
    with load_model(default_model_path, n_ctx=512, rpc=_rpc(workers)) as m:
        want = m.generate("January, February,", temperature=0, max_tokens=6).text
        stream = m.stream(PROMPT, temperature=0, max_tokens=100)
        next(iter(stream))
        stream.close()  # the caller walks away after one piece
        assert m.generate("January, February,", temperature=0, max_tokens=6).text == want
        cancelled = m.stream(PROMPT, temperature=0, max_tokens=100)
        for i, _ in enumerate(cancelled):
            if i == 2:
                cancelled.cancel()
        assert cancelled.result.finish_reason == "cancelled"


def test_worker_cache_keeps_received_weights(tmp_path, default_model_path):
    need_rpc()
    cache = tmp_path / "cache"
    cache.mkdir()
    with Worker("--cache", str(cache)) as w:
        with load_model(default_model_path, n_ctx=256, rpc=RpcSettings((w.endpoint,))) as m:
            assert m.generate("Hello", temperature=0, max_tokens=2).tokens
    # llama.cpp stores tensors over 10 MB by content hash, so a client reconnecting sends hashes, not weights
    stored = [p for p in cache.rglob("*") if p.is_file()]
    assert stored and max(p.stat().st_size for p in stored) > 10 * 2**20


def test_assistant_over_rpc(workers, tmp_path):
    """The spoken assistant with its Gemma on two workers: a replayed question, a reply."""
    import numpy as np
    import soundfile as sf

    from audio_speech import SR, speak

    speech = speak("Hello, my name is John and I live in London.", tmp_path)
    wav = tmp_path / "q.wav"
    sf.write(wav, np.concatenate([np.zeros(SR // 2), speech, np.zeros(SR)]).astype(np.float32), SR)
    eps = ",".join(w.endpoint for w in workers)
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "assistant", "--push-to-talk", "--replay", str(wav),
                           "--max-tokens", "8", "--temperature", "0", "--rpc", eps], input="\n", capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("you: ") and "London" in lines[0]
    assert lines[1].startswith("gemma: ") and len(lines[1]) > len("gemma: ")
