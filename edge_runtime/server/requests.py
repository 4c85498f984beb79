"""OpenAI request bodies -> validated jobs, before any model work.

Everything here is pure: a body that cannot run is refused with a `RequestError`
naming the field, without waiting for the model (validation never queues behind
a running generation).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from edge_runtime.chat import ChatSession
from edge_runtime.chat_format import Message
from edge_runtime.errors import ContextSizeError, EdgeRuntimeError, InvalidArgumentError
from edge_runtime.generate import GenerationSettings, Stream
from edge_runtime.model import Model
from edge_runtime.tools import Tool, ToolCall, as_tools, json_schema_grammar, tool_call_grammar

# Request fields taken as GenerationSettings fields of the same name (the last three are llama.cpp-style extensions).
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "repeat_penalty")
_INTEGER_FIELDS = {"seed": (0, 2**32 - 1), "top_k": (0, 2**31 - 1)}


class RequestError(InvalidArgumentError):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- JSON


def _reject_constant(name: str) -> Any:
    raise RequestError(f"{name} is not a JSON number; send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError(f"the number {text} is out of range")
    return value


def parse_json_body(data: bytes) -> dict[str, Any]:
    """A request body as a JSON object: strict numbers, valid UTF-8 text, bounded nesting."""
    try:
        body = json.loads(data or b"null", parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise RequestError("the request body is nested too deeply") from None
    except ValueError as exc:
        if isinstance(exc, RequestError):
            raise
        raise RequestError(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError("the request holds a lone UTF-16 surrogate (such as \\ud800); send valid Unicode text") from None
    except RecursionError:
        raise RequestError("the request body is nested too deeply") from None
    return body


# --------------------------------------------------------------------------- sampling


def _number(body: dict[str, Any], key: str) -> Any:
    value = body.get(key)
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise RequestError(f"{key} must be a number, not {value!r}")
    return value


def parse_settings(body: dict[str, Any], limit: int) -> GenerationSettings:
    """Sampling and stopping fields -> GenerationSettings (max_tokens capped at `limit`)."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = limit
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise RequestError(f"max_tokens must be a positive integer, not {max_tokens!r}")
    values: dict[str, Any] = {"max_tokens": min(max_tokens, limit)}
    for key in _FLOAT_FIELDS:
        value = _number(body, key)
        if value is not None:
            values[key] = float(value)
    for key, (low, high) in _INTEGER_FIELDS.items():
        value = _number(body, key)
        if value is None:
            continue
        if value != int(value) or not low <= value <= high:
            raise RequestError(f"{key} must be an integer from {low} to {high}, not {value!r}")
        values[key] = int(value)
    n = body.get("n")
    if n is not None and n != 1:
        raise RequestError(f"n={n!r} is not supported: this server returns one choice per request (send n requests)")
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise RequestError("stop must be a string or a list of non-empty strings")
        values["stop"] = tuple(stop)
    grammar = _response_format_grammar(body.get("response_format"))
    if grammar:
        values["grammar"] = grammar
    settings = GenerationSettings(**values)
    try:
        settings.validate()
    except InvalidArgumentError as exc:
        raise RequestError(str(exc)) from None
    return settings


def _response_format_grammar(fmt: Any) -> str | None:
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise RequestError('response_format must be {"type": "text" | "json_object" | "json_schema", ...}')
    if fmt["type"] == "text":
        return None
    schema: Any = {"type": "object"}
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise RequestError('response_format.json_schema must be an object like {"name": ..., "schema": {...}}')
        schema = spec.get("schema") or schema
    try:
        return json_schema_grammar(schema)
    except EdgeRuntimeError:
        raise
    except Exception as exc:  # llama.cpp's schema converter rejects what it cannot express
        raise RequestError(f"response_format.json_schema cannot be used: {exc}") from None


# --------------------------------------------------------------------------- messages


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
            text = part.get("text", "")
            if not isinstance(text, str):
                raise RequestError(f"a text part's 'text' must be a string, not {type(text).__name__}")
            texts.append(text)
        return "".join(texts)
    raise RequestError(f"message content must be a string or a list of parts, not {type(value).__name__}")


def _tool_call(c: Any) -> ToolCall:
    fn = c.get("function") if isinstance(c, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise RequestError(f"a tool call needs a 'function' with 'name' and 'arguments': {c!r}"[:300])
    args = fn.get("arguments") or "{}"
    try:
        args = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        raise RequestError(f"tool call arguments are not JSON: {args!r}"[:300]) from None
    return ToolCall(fn["name"], args if isinstance(args, dict) else {})


def parse_messages(raw: Any) -> list[Message]:
    """OpenAI chat messages -> Messages (tool calls and tool results included)."""
    if not isinstance(raw, list) or not raw:
        raise RequestError("messages must be a non-empty list")
    call_names: dict[str, str] = {}
    out = []
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"each message needs a 'role' string: {m!r}"[:300])
        role = "system" if m["role"] == "developer" else m["role"]
        raw_calls = m.get("tool_calls") or []
        if not isinstance(raw_calls, list):
            raise RequestError(f"a message's tool_calls must be a list, not {type(raw_calls).__name__}")
        calls = []
        for c in raw_calls:
            calls.append(_tool_call(c))
            if isinstance(c.get("id"), str):
                call_names[c["id"]] = calls[-1].name
        name = None
        if role == "tool":
            name = m.get("name") or call_names.get(str(m.get("tool_call_id", "")))
        out.append(Message(role, _content(m.get("content")), tool_calls=calls, name=name))
    if out[-1].role not in ("user", "tool"):
        raise RequestError("the last message must be from the user or a tool result")
    return out


def _tools_and_grammar(body: dict[str, Any]) -> tuple[list[Tool], str | None]:
    """`tools` and `tool_choice` -> the tools shown to the model and a grammar forcing a call."""
    raw = body.get("tools")
    if raw is not None and not isinstance(raw, list):
        raise RequestError(f"tools must be a list, not {type(raw).__name__}")
    tools = as_tools(raw)
    choice = body.get("tool_choice", "auto")
    if choice in ("auto", None):
        return tools, None
    if choice == "none":
        return [], None
    if choice == "required":
        if not tools:
            raise RequestError("tool_choice 'required' needs tools")
        return tools, tool_call_grammar(tools)
    fn = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise RequestError('tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}')
    chosen = [t for t in tools if t.name == fn["name"]]
    if not chosen:
        raise RequestError(f"tool_choice names {fn['name']!r}, which is not among the request's tools")
    return tools, tool_call_grammar(chosen)


# --------------------------------------------------------------------------- jobs


@dataclass
class CompletionJob:
    """A validated `/v1/completions` request."""

    prompt: str
    settings: GenerationSettings

    def start(self, model: Model) -> Stream:
        tokens = model.tokenize(self.prompt)
        if len(tokens) >= model.n_ctx:
            raise ContextSizeError(f"the prompt has {len(tokens)} tokens; the server's window holds {model.n_ctx}")
        settings = self.settings.replace(max_tokens=min(self.settings.max_tokens, model.n_ctx - len(tokens)))
        return model.stream(tokens, settings)


@dataclass
class ChatJob:
    """A validated `/v1/chat/completions` request."""

    messages: list[Message]
    settings: GenerationSettings
    tools: list[Tool] = field(default_factory=list)

    def start(self, model: Model) -> Stream:
        session = ChatSession(model, settings=self.settings, tools=self.tools)
        session.load(self.messages)
        return session.send(None)


def parse_completion(body: dict[str, Any], max_tokens: int) -> CompletionJob:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise RequestError("prompt must be a non-empty string")
    return CompletionJob(prompt, parse_settings(body, max_tokens))


def parse_chat(body: dict[str, Any], max_tokens: int) -> ChatJob:
    messages = parse_messages(body.get("messages"))
    settings = parse_settings(body, max_tokens)
    tools, grammar = _tools_and_grammar(body)
    if grammar:
        if settings.grammar:
            raise RequestError("response_format and a forced tool_choice cannot be combined")
        settings = settings.replace(grammar=grammar)
    return ChatJob(messages, settings, tools)
