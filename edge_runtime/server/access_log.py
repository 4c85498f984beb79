"""One log line per request, without its content: a hash of the body, sizes, timings, outcome.

Prompts and replies never reach the log; the content id lets an operator match a
complaint ("my request at 10:02 failed") to its line without reading what was asked.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger("edge_runtime.server.access")


def key_id(authorization: bytes | None) -> str:
    """A short, stable id of the key a request used ("-" for none), never the key."""
    if not authorization:
        return "-"
    return "key:" + hashlib.sha256(authorization).hexdigest()[:8]


class AccessLog:
    """ASGI middleware logging `method path status in=N out=N ms=N content=ID key=ID` per request."""

    def __init__(self, app: Any, on_done: Any = None) -> None:
        self.app = app
        self.on_done = on_done  # (method, path, status, seconds): the metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        digest = hashlib.sha256()
        sizes = {"in": 0, "out": 0}
        status = [0]

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                digest.update(body)
                sizes["in"] += len(body)
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body":
                sizes["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            headers = dict(scope.get("headers") or [])
            content = digest.hexdigest()[:12] if sizes["in"] else "-"
            if self.on_done is not None:
                self.on_done(scope["method"], scope["path"], status[0], time.perf_counter() - started)
            log.info("%s %s %d in=%d out=%d ms=%.0f content=%s key=%s", scope["method"], scope["path"],
                     status[0], sizes["in"], sizes["out"], (time.perf_counter() - started) * 1000, content,
                     key_id(headers.get(b"authorization")))
