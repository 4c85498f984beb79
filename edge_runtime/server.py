"""A local OpenAI-compatible HTTP server over one loaded model (standard library only).

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/completions`,
`POST /v1/chat/completions` (both with `"stream": true` as server-sent events).
Chat requests go through `ChatSession`, so a conversation longer than the
window is fitted (pinned system prompt, oldest turns shifted out) instead of
failing, and the KV cache is reused between requests that share a prefix.
Tools in the request are parsed into OpenAI `tool_calls`.

One model, one generation at a time: requests queue on a lock. A client that
disconnects mid-stream cancels its generation. Bound to 127.0.0.1 by default;
`api_key` requires `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

from edge_runtime.chat import ChatResult, ChatSession
from edge_runtime.chat_format import Message
from edge_runtime.errors import ContextSizeError, EdgeRuntimeError, InvalidArgumentError, ToolCallError
from edge_runtime.generate import GenerationResult, GenerationSettings, Stream
from edge_runtime.model import Model
from edge_runtime.tools import ToolCall, json_schema_grammar

log = logging.getLogger(__name__)

# Request fields taken as GenerationSettings fields of the same name (the last three are llama.cpp-style extensions).
_SAMPLING_FIELDS = ("temperature", "top_p", "seed", "top_k", "min_p", "repeat_penalty")
_INTEGER_FIELDS = ("seed", "top_k")


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port
    api_key: str | None = None
    model_id: str | None = None  # reported in /v1/models and responses (default: the GGUF's name)
    max_tokens: int = 512  # default and upper bound of a request's max_tokens
    max_body_bytes: int = 4 << 20


class RequestError(InvalidArgumentError):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- request parsing


def _settings(body: dict[str, Any], limit: int) -> GenerationSettings:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = limit
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise RequestError(f"max_tokens must be a positive integer, not {max_tokens!r}")
    values: dict[str, Any] = {"max_tokens": min(max_tokens, limit)}
    for key in _SAMPLING_FIELDS:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RequestError(f"{key} must be a number, not {value!r}")
        values[key] = int(value) if key in _INTEGER_FIELDS else float(value)
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise RequestError("stop must be a string or a list of non-empty strings")
        values["stop"] = tuple(stop)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else None
        values["grammar"] = json_schema_grammar(schema or {"type": "object"})
    settings = GenerationSettings(**values)
    settings.validate()
    return settings


def _content(value: Any) -> str:
    """Message content: a string, or OpenAI's list of parts (text parts only)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestError(f"message content part of type {kind!r} is not supported (text only)")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise RequestError(f"message content must be a string or a list of parts, not {type(value).__name__}")


def parse_messages(raw: Any) -> list[Message]:
    """OpenAI chat messages -> Messages (tool calls and tool results included)."""
    if not isinstance(raw, list) or not raw:
        raise RequestError("messages must be a non-empty list")
    call_names: dict[str, str] = {}
    out = []
    for m in raw:
        if not isinstance(m, dict) or "role" not in m:
            raise RequestError(f"each message needs a 'role': {m!r}")
        role = "system" if m["role"] == "developer" else m["role"]
        calls = []
        for c in m.get("tool_calls") or []:
            fn = c.get("function") if isinstance(c, dict) else None
            if not isinstance(fn, dict):
                raise RequestError(f"a tool call needs a 'function' with 'name' and 'arguments': {c!r}")
            args = fn.get("arguments") or "{}"
            try:
                args = json.loads(args) if isinstance(args, str) else args
            except ValueError:
                raise RequestError(f"tool call arguments are not JSON: {args!r}") from None
            calls.append(ToolCall(str(fn.get("name", "")), args if isinstance(args, dict) else {}))
            if c.get("id"):
                call_names[c["id"]] = calls[-1].name
        name = m.get("name") or call_names.get(m.get("tool_call_id", "")) if role == "tool" else None
        out.append(Message(role, _content(m.get("content")), tool_calls=calls, name=name))
    if out[-1].role not in ("user", "tool"):
        raise RequestError("the last message must be from the user or a tool result")
    return out


# --------------------------------------------------------------------------- responses


def _finish_reason(result: GenerationResult) -> str:
    if isinstance(result, ChatResult) and result.tool_calls:
        return "tool_calls"
    return "length" if result.finish_reason == "length" else "stop"


def _usage(result: GenerationResult) -> dict[str, int]:
    m = result.metrics
    return {"prompt_tokens": m.prompt_tokens, "completion_tokens": m.generated_tokens,
            "total_tokens": m.prompt_tokens + m.generated_tokens}


def _tool_calls(result: GenerationResult) -> list[dict[str, Any]]:
    calls = result.tool_calls if isinstance(result, ChatResult) else []
    return [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments)}} for c in calls]


class OpenAIServer:
    """`with OpenAIServer(model, settings) as server: server.serve_forever()` (or `start()` in a thread)."""

    def __init__(self, model: Model, settings: ServerSettings | None = None) -> None:
        self.model = model
        self.settings = settings or ServerSettings()
        self.model_id = self.settings.model_id or Path(model.info.path).stem
        self._lock = threading.Lock()  # one generation at a time
        self._thread: threading.Thread | None = None
        self._active: set[Stream] = set()  # generations in flight, cancelled by close()
        self._closed = False  # set under the lock: no generation starts once the model may be freed
        handler = type("Handler", (_Handler,), {"app": self})
        try:
            self.httpd = ThreadingHTTPServer((self.settings.host, self.settings.port), handler)
        except (OSError, OverflowError) as exc:  # OverflowError: a port outside 0-65535
            reason = getattr(exc, "strerror", None) or str(exc)
            raise InvalidArgumentError(
                f"cannot listen on {self.settings.host}:{self.settings.port} ({reason}); choose another --port"
            ) from None
        # Request threads may idle on keep-alive connections: close() does not wait for them, it waits
        # for the generation lock instead (see close), so no thread touches the model afterwards.
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> "OpenAIServer":
        self._thread = threading.Thread(target=self.serve_forever, name="edge-runtime-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting requests, cancel the generation in flight and wait for it to end.

        Afterwards no request touches the model (late ones on open connections get 503), so the
        model can be closed.
        """
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        for stream in list(self._active):
            stream.cancel()
        with self._lock:
            self._closed = True
        self.httpd.server_close()

    def __enter__(self) -> "OpenAIServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the two generation endpoints: a request body in, a Stream (consumed by the handler) out
    def completion(self, body: dict[str, Any]) -> Stream:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError("prompt must be a non-empty string")
        settings = _settings(body, self.settings.max_tokens)
        tokens = self.model.tokenize(prompt)
        if len(tokens) >= self.model.n_ctx:
            raise ContextSizeError(f"the prompt has {len(tokens)} tokens; the server's window holds {self.model.n_ctx}")
        settings = settings.replace(max_tokens=min(settings.max_tokens, self.model.n_ctx - len(tokens)))
        return self.model.stream(tokens, settings)

    def chat(self, body: dict[str, Any]) -> Stream:
        messages = parse_messages(body.get("messages"))
        session = ChatSession(self.model, settings=_settings(body, self.settings.max_tokens), tools=body.get("tools"))
        session.load(messages)
        return session.send(None)


class _Handler(BaseHTTPRequestHandler):
    app: OpenAIServer
    protocol_version = "HTTP/1.1"
    server_version = "edge-runtime"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    # plumbing
    def _send_json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: HTTPStatus, message: str, kind: str = "invalid_request_error") -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "code": status.value}})

    def _authorized(self) -> bool:
        key = self.app.settings.api_key
        given = self.headers.get("Authorization", "").encode()
        if key and not hmac.compare_digest(given, f"Bearer {key}".encode()):  # constant time
            self._error(HTTPStatus.UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer KEY)",
                        "authentication_error")
            return False
        return True

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise RequestError(f"Content-Length {self.headers.get('Content-Length')!r} is not a byte count")
        if length > self.app.settings.max_body_bytes:
            self.close_connection = True  # the unread body must not be taken for the next request
            raise RequestError(f"request body of {length} bytes is over the {self.app.settings.max_body_bytes}-byte limit",
                               HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError as exc:
            raise RequestError(f"the request body is not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    # routes
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._authorized():
            return
        if self.path == "/health":
            self._send_json(HTTPStatus.OK, {"status": "ok", "model": self.app.model_id})
        elif self.path == "/v1/models":
            self._send_json(HTTPStatus.OK, {"object": "list", "data": [
                {"id": self.app.model_id, "object": "model", "created": 0, "owned_by": "edge_runtime"}]})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route GET {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        routes = {"/v1/completions": ("text_completion", self.app.completion),
                  "/v1/chat/completions": ("chat.completion", self.app.chat)}
        if self.path not in routes:
            self._error(HTTPStatus.NOT_FOUND, f"no route POST {self.path}")
            return
        kind, start = routes[self.path]
        try:
            body = self._body()
            with self.app._lock:
                if self.app._closed:
                    self._error(HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down", "server_error")
                    return
                stream = start(body)
                self.app._active.add(stream)
                try:
                    if body.get("stream"):
                        self._stream(kind, stream)
                    else:
                        self._send_json(HTTPStatus.OK, self._response(kind, stream.consume()))
                finally:
                    self.app._active.discard(stream)
        except RequestError as exc:
            self._error(exc.status, str(exc))
        except (ToolCallError, InvalidArgumentError, ContextSizeError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except EdgeRuntimeError as exc:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc), "server_error")

    # bodies
    def _base(self, kind: str) -> dict[str, Any]:
        prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
        return {"id": f"{prefix}-{uuid.uuid4().hex[:16]}", "object": kind, "created": int(time.time()),
                "model": self.app.model_id}

    def _response(self, kind: str, result: GenerationResult) -> dict[str, Any]:
        out = self._base(kind)
        finish = _finish_reason(result)
        if kind == "chat.completion":
            message: dict[str, Any] = {"role": "assistant", "content": result.text}
            calls = _tool_calls(result)
            if calls:
                message["tool_calls"] = calls
            out["choices"] = [{"index": 0, "message": message, "finish_reason": finish}]
        else:
            out["choices"] = [{"index": 0, "text": result.text, "finish_reason": finish, "logprobs": None}]
        out["usage"] = _usage(result)
        out["metrics"] = result.metrics.as_dict()  # edge_runtime's own: TTFT, tokens/s, reused tokens, RSS
        return out

    def _stream(self, kind: str, stream: Stream) -> None:
        chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else kind
        base = self._base(chunk_kind)

        def chunk(delta: dict[str, Any] | str, finish: str | None = None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chunk_kind == "chat.completion.chunk":
                choice["delta"] = delta
            else:
                choice["text"] = delta
            return {**base, "choices": [choice]}

        def events() -> Iterator[dict[str, Any]]:
            if chunk_kind == "chat.completion.chunk":
                yield chunk({"role": "assistant", "content": ""})
            for piece in stream:
                yield chunk({"content": piece} if chunk_kind == "chat.completion.chunk" else piece)
            result = stream.result
            assert result is not None
            calls = _tool_calls(result)
            if calls:
                yield chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
            final = chunk({} if chunk_kind == "chat.completion.chunk" else "", _finish_reason(result))
            yield {**final, "usage": _usage(result), "metrics": result.metrics.as_dict()}

        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for event in events():
                self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            log.info("client went away: generation cancelled")
        except EdgeRuntimeError as exc:  # the status line is out already: report it as an event
            error = {"error": {"message": str(exc), "type": "server_error", "code": 500}}
            self.wfile.write(b"data: " + json.dumps(error).encode() + b"\n\n")
        finally:
            stream.cancel()
            stream.close()
