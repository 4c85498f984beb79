"""The OpenAI-compatible server on the real default model, over real HTTP on localhost."""

from __future__ import annotations

import http.client
import json
import logging
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from edge_runtime import GenerationSettings, load_model
from edge_runtime.chat import ChatSession
from edge_runtime.chat_format import Message
from edge_runtime.errors import InvalidArgumentError
from edge_runtime.server import OpenAIServer, RequestError, ServerSettings, parse_messages

KEY = "secret-key"


@pytest.fixture(scope="module")
def served(default_model_path):
    with load_model(default_model_path, n_ctx=512, flash_attn=False) as model:
        with OpenAIServer(model, ServerSettings(port=0, api_key=KEY, max_tokens=64)) as server:
            server.start()
            yield model, server


def call(server, path, body=None, *, key=KEY, raw: bytes | None = None):
    """(status, JSON body) of one request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(server.url + path, data=data, method="POST" if data is not None else "GET")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def connect(server, timeout=60) -> http.client.HTTPConnection:
    host, port = server.socket.getsockname()[:2]
    return http.client.HTTPConnection(host, port, timeout=timeout)


def events(server, path, body):
    """The JSON events of a streamed response, up to [DONE]."""
    req = urllib.request.Request(server.url + path, data=json.dumps({**body, "stream": True}).encode(), method="POST")
    req.add_header("Authorization", f"Bearer {KEY}")
    out = []
    with urllib.request.urlopen(req, timeout=300) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        for line in resp:
            line = line.decode().strip()
            if not line:
                continue
            assert line.startswith("data: ")
            if line == "data: [DONE]":
                return out
            out.append(json.loads(line[6:]))
    raise AssertionError("stream ended without [DONE]")


MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a color."}]


def test_models_and_health(served):
    _, server = served
    status, body = call(server, "/v1/models")
    assert status == 200 and body["data"][0]["id"] == "gemma-3-270m-q4_k_m"
    assert call(server, "/health")[1]["status"] == "ok"


def test_chat_equals_the_library_and_streaming_equals_whole(served):
    model, server = served
    status, body = call(server, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 24, "temperature": 0})
    assert status == 200 and body["object"] == "chat.completion"
    choice = body["choices"][0]
    chat = ChatSession(model, "Answer briefly.", settings=GenerationSettings(temperature=0, max_tokens=24))
    expected = chat.ask("Name a color.")
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == ("length" if expected.finish_reason == "length" else "stop")
    assert body["usage"]["prompt_tokens"] == expected.metrics.prompt_tokens
    assert body["usage"]["completion_tokens"] == expected.metrics.generated_tokens
    evs = events(server, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 24, "temperature": 0})
    assert evs[0]["object"] == "chat.completion.chunk" and evs[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in evs)
    assert text == expected.text
    assert evs[-1]["choices"][0]["finish_reason"] == choice["finish_reason"] and evs[-1]["usage"] == body["usage"]


def test_completion_equals_the_library(served):
    model, server = served
    body = {"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0}
    status, out = call(server, "/v1/completions", body)
    expected = model.generate("The capital of France is", temperature=0, max_tokens=12)
    assert status == 200 and out["choices"][0]["text"] == expected.text
    evs = events(server, "/v1/completions", body)
    assert "".join(e["choices"][0]["text"] for e in evs) == expected.text
    # the repeated prompt's KV was reused
    assert evs[-1]["metrics"]["reused_tokens"] > 0


def test_long_history_is_fitted_not_refused_and_reuses_the_cache(served):
    _, server = served
    history = [{"role": "system", "content": "You are terse."}]
    for i in range(40):  # far more than the 512-token window
        history += [{"role": "user", "content": f"Question {i}: what is {i} times seven?"},
                    {"role": "assistant", "content": f"{i * 7}."}]
    history.append({"role": "user", "content": "And eight times seven?"})
    status, first = call(server, "/v1/chat/completions", {"messages": history, "max_tokens": 8, "temperature": 0})
    assert status == 200 and first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"] <= 512
    history += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                {"role": "user", "content": "And nine times seven?"}]
    status, second = call(server, "/v1/chat/completions", {"messages": history, "max_tokens": 8, "temperature": 0})
    assert status == 200
    m = second["metrics"]
    assert m["reused_tokens"] > m["prompt_tokens"] // 2  # only the new turns were evaluated


def test_json_response_format(served):
    _, server = served
    status, body = call(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Describe Paris as JSON with city and population."}],
        "max_tokens": 64, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"schema": {
            "type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
            "required": ["city", "population"]}}}})
    assert status == 200
    data = json.loads(body["choices"][0]["message"]["content"])
    assert set(data) == {"city", "population"}


def test_tool_calls_and_results_in_the_history():
    msgs = parse_messages([
        {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Oslo?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 3}"},
    ])
    assert msgs[0] == Message("user", "Weather in Oslo?")
    assert msgs[1].tool_calls[0].name == "get_weather" and msgs[1].tool_calls[0].arguments == {"city": "Oslo"}
    assert msgs[2].role == "tool" and msgs[2].name == "get_weather"
    with pytest.raises(RequestError, match="last message"):
        parse_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    with pytest.raises(RequestError, match="tool_calls must be a list"):
        parse_messages([{"role": "assistant", "tool_calls": 5}, {"role": "user", "content": "hi"}])
    with pytest.raises(RequestError, match="image_url"):
        parse_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    with pytest.raises(RequestError, match="content must be a string or a list"):
        parse_messages([{"role": "user", "content": 42}])
    with pytest.raises(RequestError, match="needs a 'role'"):
        parse_messages([{"content": "hi"}])
    with pytest.raises(InvalidArgumentError, match="unknown chat role 'robot'"):
        parse_messages([{"role": "robot", "content": "hi"}])
    with pytest.raises(RequestError, match="arguments are not JSON"):
        parse_messages([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]},
                        {"role": "user", "content": "hi"}])
    with pytest.raises(RequestError, match="needs a 'function'"):
        parse_messages([{"role": "assistant", "tool_calls": ["f(x)"]}, {"role": "user", "content": "hi"}])


def test_chat_with_tools_answers(served):
    _, server = served
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                              "required": ["city"]}}}]
    messages = [{"role": "user", "content": "What's the weather in Oslo?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "3 degrees and rain"}]
    status, body = call(server, "/v1/chat/completions", {"messages": messages, "tools": tools, "max_tokens": 16,
                                                         "temperature": 0})
    assert status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    status, body = call(server, "/v1/chat/completions", {"messages": messages, "tools": [{"type": "function"}]})
    assert status == 400 and "name" in body["error"]["message"]


def test_errors_are_json_with_status(served):
    _, server = served
    assert call(server, "/v1/models", key="wrong")[0] == 401
    assert call(server, "/v1/models", key=None)[0] == 401
    assert call(server, "/v1/nothing")[0] == 404
    status, body = call(server, "/v1/chat/completions", raw=b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    assert call(server, "/v1/chat/completions", {"messages": []})[0] == 400
    status, body = call(server, "/v1/chat/completions", {"messages": MESSAGES, "temperature": "hot"})
    assert status == 400 and "temperature" in body["error"]["message"]
    assert call(server, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 0})[0] == 400
    status, body = call(server, "/v1/chat/completions", {"messages": MESSAGES, "stop": [""]})
    assert status == 400 and "stop must be" in body["error"]["message"]
    status, body = call(server, "/v1/chat/completions", raw=b"[1, 2]")
    assert status == 400 and "JSON object" in body["error"]["message"]
    status, body = call(server, "/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]})
    assert status == 400 and "unknown chat role" in body["error"]["message"]
    assert call(server, "/v1/completions", {"prompt": ""})[0] == 400
    status, body = call(server, "/v1/completions", {"prompt": "word " * 2000})
    assert status == 400 and "window" in body["error"]["message"]
    conn = connect(server)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.putheader("Content-Length", str(40 << 20))  # refused before the body is read
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "limit" in json.loads(resp.read())["error"]["message"]
    conn.close()
    for length in ("lots", "-5"):
        conn = connect(server)
        conn.putrequest("POST", "/v1/completions")
        conn.putheader("Authorization", f"Bearer {KEY}")
        conn.putheader("Content-Length", length)
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 400 and "Content-Length" in json.loads(resp.read())["error"]["message"]
        conn.close()


def test_client_leaving_mid_stream_cancels_and_server_goes_on(served, caplog):
    _, server = served
    caplog.set_level(logging.INFO, logger="edge_runtime.server")
    conn = connect(server)
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0, "stream": True})
    conn.request("POST", "/v1/completions", body, {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.readline().startswith(b"data: ")
    resp.close()  # leave after the first token
    conn.close()
    status, out = call(server, "/v1/completions", {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0})
    assert status == 200 and out["usage"]["completion_tokens"] == 4
    assert "client went away: generation cancelled after" in caplog.text


def test_cli_serve(default_model_path):
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "serve", "--port", "0", "--ctx", "512"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert line.startswith("[serving gemma-3-270m-q4_k_m at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split("/v1")[0]
        with urllib.request.urlopen(url + "/health", timeout=60) as resp:
            assert json.loads(resp.read())["status"] == "ok"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_port_in_use_is_a_clear_error(served):
    model, server = served
    port = server.socket.getsockname()[1]
    with pytest.raises(InvalidArgumentError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
        OpenAIServer(model, ServerSettings(port=port))
    with pytest.raises(InvalidArgumentError, match="cannot listen on 127.0.0.1:70000.*0-65535"):
        OpenAIServer(model, ServerSettings(port=70000))
    assert call(server, "/health")[0] == 200


def test_close_cancels_the_generation_and_refuses_late_requests(served):
    """close() returns with a stream in flight and an idle keep-alive connection open; afterwards
    nothing reaches the model (the model can be freed safely)."""
    model, _ = served
    server = OpenAIServer(model, ServerSettings(port=0, max_tokens=200)).start()
    address = server.socket.getsockname()[:2]
    idle = connect(server)
    idle.request("GET", "/health")
    assert idle.getresponse().read() and idle.sock is not None  # kept alive
    busy = connect(server)
    busy.request("POST", "/v1/completions", json.dumps({"prompt": "Once upon a time", "max_tokens": 200,
                                                        "temperature": 0, "stream": True}))
    resp = busy.getresponse()
    assert resp.readline().startswith(b"data: ")
    server.close()
    assert not server.state.active
    rest = resp.read().decode()  # the generation was cancelled: the stream ends early
    last = json.loads([line for line in rest.splitlines() if line.startswith("data: {")][-1][6:])
    assert last["usage"]["completion_tokens"] < 200
    with pytest.raises((ConnectionError, http.client.HTTPException)):  # the idle connection was closed
        idle.request("POST", "/v1/completions", json.dumps({"prompt": "Hello", "max_tokens": 2}))
        idle.getresponse()
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection(*address, timeout=60).request("GET", "/health")
    idle.close()
    busy.close()
