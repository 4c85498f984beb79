"""OpenAI request bodies -> validated jobs, before any model work.

Everything here is pure: a body that cannot run is refused with a `RequestError`
naming the field, without waiting for the model (validation never queues behind
a running generation).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from edge_runtime.chat import ChatSession
from edge_runtime.chat_format import Message
from edge_runtime.errors import ContextSizeError, EdgeRuntimeError, InvalidArgumentError
from edge_runtime.generate import GenerationSettings, Stream
from edge_runtime.media import Audio, Image
from edge_runtime.model import Model
from edge_runtime.tools import Tool, ToolCall, as_tools, json_schema_grammar, tool_call_grammar

# Request fields taken as GenerationSettings fields of the same name (the last three are llama.cpp-style extensions).
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "repeat_penalty")
_INTEGER_FIELDS = {"seed": (0, 2**32 - 1), "top_k": (0, 2**31 - 1)}


class RequestError(InvalidArgumentError):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


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


MAX_MEDIA_BYTES = 20 << 20  # one image or clip, decoded


def _content(value: Any, media_dir: Path | None) -> list[Any]:
    """Message content -> parts: a string, or OpenAI's list of parts (text, image_url, input_audio)."""
    if value is None:
        return [""]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        parts: list[Any] = []
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind == "text":
                text = part.get("text", "")
                if not isinstance(text, str):
                    raise RequestError(f"a text part's 'text' must be a string, not {type(text).__name__}")
                parts.append(text)
            elif kind == "image_url":
                parts.append(_image_part(part.get("image_url"), media_dir))
            elif kind == "input_audio":
                parts.append(_audio_part(part.get("input_audio")))
            else:
                raise RequestError(f"message content part of type {kind!r} is not supported "
                                   "(text, image_url, input_audio)")
        return parts
    raise RequestError(f"message content must be a string or a list of parts, not {type(value).__name__}")


def _base64(data: Any, what: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise RequestError(f"{what} needs base64 data")
    if len(data) > MAX_MEDIA_BYTES * 4 // 3 + 4:
        raise RequestError(f"{what} is larger than the {MAX_MEDIA_BYTES >> 20} MiB a media item may be",
                           HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{what} is not valid base64") from None


def _image_part(spec: Any, media_dir: Path | None) -> Image:
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise RequestError("an image_url part needs {'url': 'data:image/png;base64,...'}")
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.endswith(";base64"):
            raise RequestError("an image data URL must be base64 (data:image/png;base64,...)")
        return Image(_base64(payload, "the image_url data"))
    if url.startswith(("http://", "https://")):
        raise RequestError("this server does not fetch URLs: send the image as a data URL (data:image/png;base64,...)")
    if media_dir is None:
        raise RequestError("image_url must be a data URL; local files are read only when the server is started "
                           "with --media-dir DIR")
    raw = Path(url.removeprefix("file://"))
    path = (raw if raw.is_absolute() else media_dir / raw).resolve()
    if not path.is_relative_to(media_dir) or not path.is_file():
        raise RequestError(f"image {url!r} is not a file inside the server's media folder")
    return Image(path)


def _audio_part(spec: Any) -> Audio:
    if not isinstance(spec, dict):
        raise RequestError("an input_audio part needs {'data': BASE64, 'format': 'wav' | 'mp3'}")
    if spec.get("format") not in ("wav", "mp3"):
        raise RequestError(f"input_audio format must be 'wav' or 'mp3', not {spec.get('format')!r}")
    return Audio(_base64(spec.get("data"), "the input_audio data"))


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


def parse_messages(raw: Any, media_dir: Path | None = None) -> list[Message]:
    """OpenAI chat messages -> Messages (tool calls, tool results and media parts included)."""
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
        parts = _content(m.get("content"), media_dir)
        if role != "user" and not all(isinstance(p, str) for p in parts):
            raise RequestError(f"media parts go in user messages, not in {role!r} ones")
        message = Message.of_parts(role, parts)
        message.tool_calls, message.name = calls, name
        out.append(message)
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


def parse_lora(value: Any, loaded: list[str]) -> tuple[tuple[str, float], ...]:
    """A request's `lora` field, as llama-server takes it: [{"id": N, "scale": S}, ...] over the adapters
    loaded at start (GET /lora-adapters); the ones it leaves out do not apply."""
    if not isinstance(value, list):
        raise RequestError('lora must be a list of {"id": N, "scale": S}')
    spec = []
    for item in value:
        if not isinstance(item, dict) or set(item) - {"id", "scale"} or "id" not in item:
            raise RequestError(f'lora items are {{"id": N, "scale": S}}, not {item!r}')
        i, scale = item["id"], item.get("scale", 1.0)
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(loaded):
            raise RequestError(f"lora id {i!r} is not one of the {len(loaded)} adapters the server loaded "
                               "(GET /lora-adapters)")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
            raise RequestError(f"lora scale must be a finite number, not {scale!r}")
        spec.append((loaded[i], float(scale)))
    return tuple(spec)


def parse_completion(body: dict[str, Any], max_tokens: int, media_dir: Path | None = None) -> CompletionJob:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise RequestError("prompt must be a non-empty string")
    return CompletionJob(prompt, parse_settings(body, max_tokens))


def parse_chat(body: dict[str, Any], max_tokens: int, media_dir: Path | None = None) -> ChatJob:
    messages = parse_messages(body.get("messages"), media_dir)
    settings = parse_settings(body, max_tokens)
    tools, grammar = _tools_and_grammar(body)
    if grammar:
        if settings.grammar:
            raise RequestError("response_format and a forced tool_choice cannot be combined")
        settings = settings.replace(grammar=grammar)
    return ChatJob(messages, settings, tools)
