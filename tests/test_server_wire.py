"""The server on the wire: many connections, keep-alive, hostile bodies, timeouts, disconnects, keys.

Real HTTP on localhost against the real default model; the official `openai` client where it applies.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import socket
import subprocess
import sys
import time

import openai
import pytest

from edge_runtime import load_model
from edge_runtime.errors import InvalidArgumentError
from edge_runtime.server import OpenAIServer, ServerSettings, resolve_api_key

KEY = "k-123"


@pytest.fixture(scope="module")
def model(default_model_path):
    with load_model(default_model_path, n_ctx=512, flash_attn=False) as m:
        yield m


@pytest.fixture(scope="module")
def server(model):
    settings = ServerSettings(port=0, api_key=KEY, max_tokens=400, request_timeout_s=1.5)
    with OpenAIServer(model, settings).start() as srv:
        yield srv


def client(server, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120, **kw)


def raw(server, data: bytes, *, read_timeout: float = 30) -> bytes:
    """Send bytes on a fresh connection; everything the server answers until it closes or goes quiet."""
    host, port = server.socket.getsockname()[:2]
    with socket.create_connection((host, port), timeout=read_timeout) as s:
        s.sendall(data)
        return _read_response(s)


def _read_response(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return out
        if not chunk:
            return out
        out += chunk
        head, sep, body = out.partition(b"\r\n\r\n")
        if sep:
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            if length and len(body) >= length[0]:
                return out


def status_and_json(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split()[1]), json.loads(body)


def post(path: str, body: bytes | str, *, key: str | None = KEY, extra: str = "") -> bytes:
    body = body.encode() if isinstance(body, str) else body
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


CHAT = "/v1/chat/completions"
HELLO = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}


def test_fifty_concurrent_clients_are_all_answered(server):
    """The listen backlog is not Python's default 5: no connection is reset under a burst."""
    def one(i: int) -> str:
        with client(server) as c:
            r = c.chat.completions.create(model="x", messages=[{"role": "user", "content": f"Say {i}"}],
                                          max_tokens=2, temperature=0)
            return r.choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        reasons = list(pool.map(one, range(50)))
    assert len(reasons) == 50 and set(reasons) <= {"length", "stop"}


def test_a_refused_post_body_is_not_read_as_the_next_request(server):
    with client(server) as c:  # one client: one kept-alive connection
        with pytest.raises(openai.NotFoundError):
            c.embeddings.create(model="x", input="hello " * 50)
        r = c.chat.completions.create(model="x", messages=HELLO["messages"], max_tokens=2)
        assert r.choices[0].message.role == "assistant"
    host, port = server.socket.getsockname()[:2]
    with socket.create_connection((host, port), timeout=30) as s:
        # a 401 with a body, then a valid request on the same connection
        s.sendall(post(CHAT, json.dumps(HELLO), key="wrong"))
        assert status_and_json(_read_response(s))[0] == 401
        s.sendall(post(CHAT, json.dumps(HELLO)))
        status, body = status_and_json(_read_response(s))
        assert status == 200 and body["object"] == "chat.completion"
        # a chunked body is decoded, not taken for a request
        data = json.dumps(HELLO).encode()
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
        s.sendall((f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n").encode() + chunked)
        reply = _read_response(s)
        assert reply.startswith(b"HTTP/1.1 200") and b"chat.completion" in reply


@pytest.mark.parametrize("body, field", [
    ('{"messages": [{"role": "user", "content": "Hi \\ud800"}]}', "surrogate"),
    ('{"messages": [{"role": "user", "content": "Hi"}], "seed": 1e400}', "1e400"),
    ('{"messages": [{"role": "user", "content": "Hi"}], "seed": NaN}', "NaN"),
    ('{"messages": [{"role": "user", "content": "Hi"}], "temperature": Infinity}', "Infinity"),
    ('{"messages": [{"role": "user", "content": "Hi"}], "temperature": -1e-9}', "temperature"),
    ('{"messages": [{"role": "user", "content": "Hi"}], "seed": 1.5}', "seed"),
    ('{"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_schema", "json_schema": "x"}}',
     "json_schema"),
    ('{"messages": [{"role": "user", "content": "Hi"}], "response_format": "json"}', "response_format"),
    ('{"messages": [{"role": "assistant", "content": "", "tool_calls": 5}, {"role": "user", "content": "Hi"}]}',
     "tool_calls"),
    ('{"messages": [{"role": "user", "content": "Hi"}], "tools": [5]}', "tool"),
    ('{"messages": [{"role": "user", "content": "Hi"}], "tools": {"a": 1}}', "tools must be a list"),
    ('{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}', "text"),
    ('{"messages": [{"role": 5, "content": "Hi"}]}', "role"),
    ('{"messages": [{"role": "user", "content": "Hi"}], "stream": "yes"}', "stream"),
    ('{"messages": [{"role": "user", "content": "Hi"}], "n": 2}', "n=2"),
    ('{"messages": [{"role": "user", "content": "Hi"}], "tool_choice": "required"}', "tool_choice"),
    ('{"messages": [{"role": "user", "content": "Hi"}], "tool_choice": {"type": "function", "function": {"name": "f"}}}',
     "not among"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_hostile_bodies_get_a_json_400_naming_the_problem(server, body, field):
    status, out = status_and_json(raw(server, post(CHAT, body)))
    assert status == 400 and field in out["error"]["message"], out


def test_validation_does_not_wait_for_a_running_generation(server):
    host, port = server.socket.getsockname()[:2]
    with socket.create_connection((host, port), timeout=60) as busy:
        busy.sendall(post("/v1/completions", json.dumps({"prompt": "Once upon a time", "max_tokens": 400,
                                                         "temperature": 0, "stream": True})))
        assert busy.recv(4096).startswith(b"HTTP/1.1 200")
        status, out = status_and_json(raw(server, post(CHAT, json.dumps({**HELLO, "temperature": -1}))))
        assert status == 400 and "temperature" in out["error"]["message"]
        assert server.state.active, "the 400 came only after the running stream had ended"


def _wait_for(predicate, what: str, limit: float = 60) -> None:
    end = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def test_a_client_leaving_a_non_streaming_request_cancels_it(server, caplog):
    caplog.set_level(logging.INFO, logger="edge_runtime.server")
    host, port = server.socket.getsockname()[:2]
    s = socket.create_connection((host, port), timeout=60)
    s.sendall(post("/v1/completions", json.dumps({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0})))
    _wait_for(lambda: server.state.active, "the generation started")
    s.close()
    _wait_for(lambda: not server.state.active, "the generation was cancelled")
    line = [r.getMessage() for r in caplog.records if "client went away" in r.getMessage()][-1]
    assert int(line.split("after ")[1].split()[0]) < 400
    with client(server) as c:
        assert c.completions.create(model="x", prompt="Hello", max_tokens=3).usage.completion_tokens == 3


def test_slow_and_silent_clients_time_out_with_json(server):
    # a body shorter than its Content-Length
    short = post(CHAT, json.dumps(HELLO)).replace(b"Content-Length: ", b"Content-Length: 9")
    status, out = status_and_json(raw(server, short))
    assert status == 408 and "did not arrive" in out["error"]["message"]
    # a connection that sends nothing, and one that never finishes its headers, are closed
    for data in (b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"):
        status, out = status_and_json(raw(server, data))
        assert status == 408 and "no complete request" in out["error"]["message"]
    # meanwhile nothing is blocked
    with client(server) as c:
        assert c.models.list().data[0].id


def test_http_errors_are_json(server):
    host = "Host: x\r\n"
    status, out = status_and_json(raw(server, b"GET /health HTTP/1.1\r\n" + host.encode() + b"X: " + b"a" * 20000 +
                                       b"\r\n\r\n"))
    assert status == 431 and "headers" in out["error"]["message"]
    status, out = status_and_json(raw(server, f"PUT /v1/models HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n".encode()))
    assert status == 405 and "PUT" in out["error"]["message"]
    response = raw(server, f"GET {CHAT} HTTP/1.1\r\n{host}Authorization: Bearer {KEY}\r\n\r\n".encode())
    assert status_and_json(response)[0] == 405 and b"allow: post" in response.lower()
    status, out = status_and_json(raw(server, f"BREW /v1/nothing HTTP/1.1\r\n{host}\r\n".encode()))
    assert status == 404 and "/v1/nothing" in out["error"]["message"]
    status, out = status_and_json(raw(server, b"NOT HTTP AT ALL\r\n\r\n"))
    assert status == 400


def test_health_is_open_the_api_needs_the_key_and_replies_are_one_segment_each(server):
    status, out = status_and_json(raw(server, b"GET /health?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 200 and out["status"] == "ok"
    assert status_and_json(raw(server, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 401
    with client(server) as c:
        c.models.list()
        # Nagle off on the server's side of every connection: headers and body never wait for an ACK
        conns = server.connections
        assert conns and all(p.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                             for p in conns)


def test_tool_choice(server):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                              "required": ["city"]}}}]
    messages = [{"role": "user", "content": "What's the weather in Oslo?"}]
    with client(server) as c:
        r = c.chat.completions.create(model="x", messages=messages, tools=tools, tool_choice="required",
                                      max_tokens=40, temperature=0)
        assert r.choices[0].finish_reason == "tool_calls"
        call = r.choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
        r = c.chat.completions.create(model="x", messages=messages, tools=tools, max_tokens=40, temperature=0,
                                      tool_choice={"type": "function", "function": {"name": "get_weather"}})
        assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
        r = c.chat.completions.create(model="x", messages=messages, tools=tools, tool_choice="none",
                                      max_tokens=8, temperature=0)
        assert not r.choices[0].message.tool_calls


def test_api_key_from_a_file_or_the_environment(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    monkeypatch.setenv("EDGE_RUNTIME_API_KEY", "from-env")
    assert resolve_api_key(None, key_file) == "from-file"
    assert resolve_api_key(None, None) == "from-env"
    assert resolve_api_key("given", None) == "given"
    for bad, message in ((tmp_path / "missing", "cannot read"), (tmp_path / "empty", "is empty")):
        if "empty" in message:
            bad.write_text("\n")
        with pytest.raises(InvalidArgumentError, match=message):
            resolve_api_key(None, bad)


def _serve(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge_runtime", "serve", "--ctx", "256", *args],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def test_cli_serve_reads_the_key_from_the_environment_and_names_a_bad_host():
    proc = _serve("--port", "0", env={"EDGE_RUNTIME_API_KEY": "env-key"})
    try:
        line = proc.stderr.readline()
        url = line.split(" at ")[1].split("/v1")[0]
        c = openai.OpenAI(base_url=url + "/v1", api_key="env-key", max_retries=0)
        assert c.models.list().data
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="other", max_retries=0).models.list()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    proc = _serve("--host", "10.255.255.1")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "--host" in err and "--port" not in err, err


def test_requests_are_logged_without_their_content(server, caplog):
    caplog.set_level(logging.INFO, logger="edge_runtime.server.access")
    secret = "my secret question about the merger"
    with client(server) as c:
        r = c.chat.completions.create(model="x", messages=[{"role": "user", "content": secret}], max_tokens=3)

    def lines() -> list[str]:  # logged once the response is out: the client may read it first
        return [rec.getMessage() for rec in caplog.records if rec.name == "edge_runtime.server.access"
                and rec.getMessage().startswith("POST /v1/chat/completions 200")]

    _wait_for(lines, "the request is logged")
    line = lines()[-1]
    assert "content=" in line and "key=key:" in line and "in=" in line and "ms=" in line
    assert r.usage.prompt_tokens > 0 and secret not in caplog.text and KEY not in caplog.text


def test_listening_beyond_loopback_without_a_key_warns(model, caplog):
    caplog.set_level(logging.WARNING)
    with OpenAIServer(model, ServerSettings(host="0.0.0.0", port=0)):
        pass
    assert "without an API key" in caplog.text
    caplog.clear()
    with OpenAIServer(model, ServerSettings(host="0.0.0.0", port=0, api_key="k")), \
            OpenAIServer(model, ServerSettings(port=0)):
        pass
    assert "without an API key" not in caplog.text


def test_a_full_queue_answers_429_with_retry_after(model):
    with OpenAIServer(model, ServerSettings(port=0, max_tokens=400, max_queue=1)).start() as srv:
        host, port = srv.socket.getsockname()[:2]
        busy = socket.create_connection((host, port), timeout=60)
        busy.sendall(post("/v1/completions", json.dumps({"prompt": "Once upon a time", "max_tokens": 400,
                                                         "stream": True}), key=None))
        _wait_for(lambda: srv.state.active, "the first generation started")
        queued = socket.create_connection((host, port), timeout=60)
        queued.sendall(post(CHAT, json.dumps(HELLO), key=None))
        _wait_for(lambda: srv.state.waiting == 1, "the second request is queued")
        response = raw(srv, post(CHAT, json.dumps(HELLO), key=None))
        status, out = status_and_json(response)
        assert status == 429 and "busy" in out["error"]["message"] and b"retry-after: " in response.lower()
        busy.close()  # the queued request then runs
        assert _read_response(queued).startswith(b"HTTP/1.1 200")
        queued.close()


def test_cors_is_off_unless_origins_are_listed(server, model):
    preflight = (f"OPTIONS {CHAT} HTTP/1.1\r\nHost: x\r\nOrigin: http://localhost:3000\r\n"
                 "Access-Control-Request-Method: POST\r\n\r\n").encode()
    assert b"access-control-allow-origin" not in raw(server, preflight).lower()
    with OpenAIServer(model, ServerSettings(port=0, cors_origins=("http://localhost:3000",))).start() as srv:
        answer = raw(srv, preflight).lower()
        assert answer.startswith(b"http/1.1 200") and b"access-control-allow-origin: http://localhost:3000" in answer
        other = raw(srv, preflight.replace(b"localhost:3000", b"evil.example")).lower()
        assert b"access-control-allow-origin" not in other
