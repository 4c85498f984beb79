"""The server's concurrent streams (`--parallel N`, batching/) on the real default model, through the
official `openai` client, sync and async, over real HTTP on localhost."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request

import openai
import pytest

from edge_runtime import load_model
from edge_runtime.server import OpenAIServer, ServerSettings

from batch_support import check_same_or_near_tie, wait_until as _wait

KEY = "batch-key"
PROMPTS = [f"Item {i}: the {w} of the" for i in range(10) for w in ("colour", "size", "name", "history", "price")]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def reference(default_model_path):
    """One slot: the one-at-a-time replies and the logits at any parting point."""
    with load_model(default_model_path, n_ctx=512) as m:
        yield m


@pytest.fixture(scope="module")
def server(default_model_path):
    with load_model(default_model_path, n_ctx=512, parallel=8) as model:
        with OpenAIServer(model, ServerSettings(port=0, api_key=KEY, max_tokens=400)).start() as srv:
            yield srv


def sync_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def async_client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def test_fifty_concurrent_streams_equal_the_same_requests_one_at_a_time(server, reference):
    async def one(client: openai.AsyncOpenAI, prompt: str) -> tuple[str, str]:
        stream = await client.completions.create(model="m", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                                 stream=True)
        pieces, reason = [], None
        async for chunk in stream:
            pieces.append(chunk.choices[0].text)
            reason = chunk.choices[0].finish_reason or reason
        return "".join(pieces), reason

    async def all_at_once() -> list[tuple[str, str]]:
        async with async_client(server) as client:
            return await asyncio.gather(*(one(client, p) for p in PROMPTS))

    stats = server.state.model.generator.stats
    before = stats.most_streams
    concurrent = asyncio.run(all_at_once())
    assert stats.most_streams == 8 > before or stats.most_streams == 8
    with sync_client(server) as client:
        alone = [client.completions.create(model="m", prompt=p, max_tokens=MAX_TOKENS, temperature=0)
                 for p in PROMPTS]
    same = 0
    for prompt, (text, reason), single in zip(PROMPTS, concurrent, alone):
        assert reason == single.choices[0].finish_reason == "length"
        # Both against a fresh one-slot run (the server's slots reuse prefixes computed in other batches).
        want = reference.generate(prompt, temperature=0, max_tokens=MAX_TOKENS).tokens
        check_same_or_near_tie(reference, prompt, single.choices[0].text, want)
        same += check_same_or_near_tie(reference, prompt, text, want) and text == single.choices[0].text
        assert single.usage.prompt_tokens == len(reference.tokenize(prompt))
        assert single.usage.completion_tokens == MAX_TOKENS
    assert same >= len(PROMPTS) // 4  # the others part from them only at near-ties (checked above)


def test_every_text_endpoint_with_the_async_client(server):
    weather = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                "parameters": {"type": "object", "properties": {
                                                    "city": {"type": "string"}}, "required": ["city"]}}}
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer", "maximum": 150}},
              "required": ["name", "age"]}

    async def run():
        async with async_client(server) as c:
            models = await c.models.list()
            chat, completion, tool, structured, json_mode = await asyncio.gather(
                c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                                          temperature=0),
                c.completions.create(model="m", prompt="The capital of France is", max_tokens=8, temperature=0),
                c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                          tools=[weather], tool_choice="required", max_tokens=64, temperature=0),
                c.chat.completions.create(model="m", messages=[{"role": "user", "content": "A person"}],
                                          response_format={"type": "json_schema", "json_schema": {
                                              "name": "person", "schema": schema}}, max_tokens=64, temperature=0),
                c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Describe Paris as JSON."}],
                                          response_format={"type": "json_object"}, max_tokens=120, temperature=0),
            )
            stream = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hello"}],
                                                     max_tokens=6, temperature=0, stream=True,
                                                     stream_options={"include_usage": True})
            chunks = [chunk async for chunk in stream]
            return models, chat, completion, tool, structured, json_mode, chunks

    models, chat, completion, tool, structured, json_mode, chunks = asyncio.run(run())
    assert [m.id for m in models.data] == [server.model_id]
    assert chat.choices[0].message.content and chat.usage.completion_tokens <= 8
    assert completion.choices[0].text and completion.usage.completion_tokens == 8
    call = tool.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    person = json.loads(structured.choices[0].message.content)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    if json_mode.choices[0].finish_reason == "stop":  # a base model may ramble past max_tokens: then cut
        assert isinstance(json.loads(json_mode.choices[0].message.content), dict)
    assert json_mode.choices[0].message.content.startswith("{")
    assert chunks[-1].usage.completion_tokens == 6
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _start_stream(srv, prompt: str, max_tokens: int) -> socket.socket:
    host, port = srv.socket.getsockname()[:2]
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "stream": True}).encode()
    s = socket.create_connection((host, port), timeout=60)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert s.recv(65536).startswith(b"HTTP/1.1 200")  # headers, then events
    return s


def test_disconnects_free_slots_and_the_queue_answers_429(default_model_path):
    with load_model(default_model_path, n_ctx=512, parallel=2) as model, \
            OpenAIServer(model, ServerSettings(port=0, max_tokens=400, max_queue=1)).start() as srv:
        engine = model.generator
        first = _start_stream(srv, "Once upon a time", 400)
        second = _start_stream(srv, "In a galaxy far away", 400)
        _wait(lambda: engine.busy == 2, "both slots generate")
        third = socket.create_connection(srv.socket.getsockname()[:2], timeout=60)
        body = json.dumps({"prompt": "Hello", "max_tokens": 4}).encode()
        third.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        _wait(lambda: srv.state.waiting == 1, "the third request waits")
        with sync_client(srv) as client:
            with pytest.raises(openai.RateLimitError) as refused:
                client.completions.create(model="m", prompt="Hi", max_tokens=2)
        assert refused.value.response.headers["retry-after"] and "busy" in str(refused.value)
        first.close()  # the client goes away: its slot is free at the next step, the waiting one runs
        answer = b""
        while b'"usage"' not in answer:
            answer += third.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        second.close()
        _wait(lambda: engine.busy == 0 and srv.state.in_flight == 0, "every slot is free")
        third.close()
        assert engine.stats.most_streams == 2


def test_metrics_show_busy_slots_and_kv_cells(server):
    with sync_client(server) as client:
        client.completions.create(model="m", prompt="The capital of France is", max_tokens=4)
    req = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}
    assert values["edge_runtime_busy_slots"] == 0 and values["edge_runtime_slots"] == 8
    assert values["edge_runtime_kv_cells_used"] > 0
    assert values["edge_runtime_kv_cells_total"] == 512 * 8


def test_generation_settings_reach_every_stream(server, reference):
    """A per-request setting (stop string, temperature 0) is the request's own in a shared batch."""
    async def run():
        async with async_client(server) as c:
            return await asyncio.gather(
                c.completions.create(model="m", prompt="1, 2, 3, 4,", max_tokens=24, temperature=0, stop=[" 8"]),
                c.completions.create(model="m", prompt="1, 2, 3, 4,", max_tokens=24, temperature=0),
                c.completions.create(model="m", prompt="1, 2, 3, 4,", max_tokens=24, temperature=1.5, seed=7),
            )

    stopped, full, hot = asyncio.run(run())
    assert stopped.choices[0].finish_reason == "stop" and " 8" not in stopped.choices[0].text
    assert full.choices[0].text.startswith(stopped.choices[0].text) and " 8" in full.choices[0].text
    assert hot.usage.completion_tokens >= 1
