"""OpenAI response bodies and stream chunks built from generation results."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from edge_runtime.chat import ChatResult
from edge_runtime.generate import GenerationResult

CHAT = "chat.completion"
COMPLETION = "text_completion"


def error_body(status: int, message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status}}


def finish_reason(result: GenerationResult) -> str:
    if isinstance(result, ChatResult) and result.tool_calls:
        return "tool_calls"
    return "length" if result.finish_reason == "length" else "stop"


def usage(result: GenerationResult) -> dict[str, int]:
    m = result.metrics
    return {"prompt_tokens": m.prompt_tokens, "completion_tokens": m.generated_tokens,
            "total_tokens": m.prompt_tokens + m.generated_tokens}


def tool_calls(result: GenerationResult) -> list[dict[str, Any]]:
    calls = result.tool_calls if isinstance(result, ChatResult) else []
    return [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments)}} for c in calls]


class ResponseBuilder:
    """Bodies of one request's response: whole (`complete`) or as stream chunks."""

    def __init__(self, kind: str, model_id: str) -> None:
        self.kind = kind
        prefix = "chatcmpl" if kind == CHAT else "cmpl"
        self.base = {"id": f"{prefix}-{uuid.uuid4().hex[:16]}", "created": int(time.time()), "model": model_id}

    def complete(self, result: GenerationResult) -> dict[str, Any]:
        out: dict[str, Any] = {**self.base, "object": self.kind}
        finish = finish_reason(result)
        if self.kind == CHAT:
            message: dict[str, Any] = {"role": "assistant", "content": result.text}
            calls = tool_calls(result)
            if calls:
                message["tool_calls"] = calls
            out["choices"] = [{"index": 0, "message": message, "finish_reason": finish}]
        else:
            out["choices"] = [{"index": 0, "text": result.text, "finish_reason": finish, "logprobs": None}]
        out["usage"] = usage(result)
        out["metrics"] = result.metrics.as_dict()  # edge_runtime's own: TTFT, tokens/s, reused tokens, RSS
        return out

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if self.kind == CHAT:
            choice["delta"] = delta
            return {**self.base, "object": "chat.completion.chunk", "choices": [choice]}
        choice["text"] = delta.get("content", "")
        return {**self.base, "object": self.kind, "choices": [choice]}

    def first_chunk(self) -> dict[str, Any] | None:
        return self._chunk({"role": "assistant", "content": ""}) if self.kind == CHAT else None

    def piece_chunk(self, piece: str) -> dict[str, Any]:
        return self._chunk({"content": piece})

    def final_chunks(self, result: GenerationResult) -> list[dict[str, Any]]:
        out = []
        calls = tool_calls(result)
        if calls:
            out.append(self._chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}))
        final = self._chunk({}, finish_reason(result))
        out.append({**final, "usage": usage(result), "metrics": result.metrics.as_dict()})
        return out


def sse(event: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    data = event if isinstance(event, str) else json.dumps(event)
    return b"data: " + data.encode() + b"\n\n"
