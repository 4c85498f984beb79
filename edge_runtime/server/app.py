"""The ASGI application: routes, errors as JSON, generations handed to the model's scheduler.

Requests are read and validated on the event loop (never behind a running
generation). The model schedules the generations itself: its batch engine
(`--parallel N`, batching/) decodes N at once and queues the rest; a model
with one slot runs them one by one. Past N + --max-queue requests in flight the
answer is 429. A client that disconnects, streaming or not, cancels its
generation at the next step and frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable, Union

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from edge_runtime.errors import (AudioError, ContextSizeError, EdgeRuntimeError, InvalidArgumentError, RpcError,
                                 ToolCallError, UnsupportedModelError)
from edge_runtime.audio.service import SpeechService
from edge_runtime.generate import Stream, aiter_stream
from edge_runtime.model import Model
from edge_runtime.server.access_log import AccessLog
from edge_runtime.server.auth import authorized
from edge_runtime.server.requests import (ChatJob, CompletionJob, RequestError, parse_chat, parse_completion,
                                         parse_json_body, parse_lora)
from edge_runtime.server.responses import CHAT, COMPLETION, ResponseBuilder, error_body, sse
from edge_runtime.server.alerts import AlertRules, Alerts
from edge_runtime.server.keys import ApiKey, KeyLimits, Refused, key_hash
from edge_runtime.server.metrics import ServerMetrics
from edge_runtime.server.speech import speech_endpoint

STATIC = Path(__file__).parent / "static"  # the chat page (GET /): no CDN, works offline
log = logging.getLogger("edge_runtime.server")

Job = Union[ChatJob, CompletionJob]


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port
    api_key: str | None = None
    model_id: str | None = None  # reported in /v1/models and responses (default: the GGUF's name)
    max_tokens: int = 512  # default and upper bound of a request's max_tokens
    max_body_bytes: int = 32 << 20  # media come base64-encoded in the body
    request_timeout_s: float = 30.0  # to send a request's headers and its whole body
    keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this
    backlog: int = 2048  # pending connections the kernel queues before accept
    max_header_bytes: int = 16 << 10
    max_queue: int = 64  # generation requests waiting for the model; more get 429 with Retry-After
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API (none: CORS off)
    media_dir: Path | None = None  # image_url may name files inside it (otherwise data URLs only)
    keys: dict[str, ApiKey] | None = None  # several keys with limits (keys.py), by sha256; api_key stays unlimited
    alert_rules: AlertRules = field(default_factory=AlertRules)
    alert_interval_s: float = 15.0  # how often alerts are evaluated (and logged) without a request
    metrics_json: str | None = None  # a file the metrics and alerts are written to every alert_interval_s
    asr: str = "auto"  # speech engine of /v1/audio/*: auto, whisper, gemma or off
    asr_model: str | None = None  # a Whisper name or folder (whisper), a GGUF (gemma; default: the served model)
    asr_mmproj: str | None = None  # the Gemma engine's audio encoder / projector


@dataclass
class ServerState:
    """What the routes share: the model, the generations in flight."""

    model: Model
    settings: ServerSettings
    model_id: str
    active: set[Stream] = field(default_factory=set)
    in_flight: int = 0  # generation requests admitted and not yet answered
    closed: bool = False  # no generation starts once the model may be freed
    speech: SpeechService | None = None  # /v1/audio/*: its engine loaded on first use
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    limits: KeyLimits = field(default_factory=KeyLimits)
    alerts: Alerts | None = None

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return max(0, self.in_flight - self.model.parallel)

    @property
    def busy(self) -> int:
        """Slots generating."""
        return min(self.in_flight, self.model.parallel)

    def cancel_all(self) -> None:
        self.closed = True
        for stream in list(self.active):
            stream.cancel()


def _json_error(status: int, message: str, kind: str = "invalid_request_error",
                headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, kind), status_code=status, headers=headers)


def _error_for(exc: Exception) -> JSONResponse:
    """The JSON response for an error raised while preparing or starting a generation."""
    if isinstance(exc, RequestError):
        return _json_error(exc.status, str(exc))
    if isinstance(exc, (ToolCallError, InvalidArgumentError, ContextSizeError, UnsupportedModelError, AudioError)):
        return _json_error(400, str(exc))  # the request asks for something this model cannot take
    if isinstance(exc, RpcError):  # a worker is down: the request may succeed once it is back
        return _json_error(503, str(exc), "server_error", headers={"Retry-After": "5"})
    if isinstance(exc, EdgeRuntimeError):
        return _json_error(500, str(exc), "server_error")
    log.exception("unexpected error while handling a request")
    return _json_error(500, f"internal error ({type(exc).__name__}); see the server log", "server_error")


async def _read_body(request: Request, settings: ServerSettings) -> bytes:
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {declared} bytes is over the {limit}-byte limit",
                           HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(f"request body is over the {limit}-byte limit", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), settings.request_timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(f"the request body did not arrive within {settings.request_timeout_s:g} s",
                           HTTPStatus.REQUEST_TIMEOUT) from None


class GenerationResponse(Response):
    """Runs a validated job on the model; JSON or server-sent events."""

    def __init__(self, state: ServerState, job: Job, kind: str, streaming: bool, key: ApiKey | None = None) -> None:
        self.state, self.job, self.kind, self.streaming, self.key = state, job, kind, streaming, key
        self.background = None
        self.tokens = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self.state.limits.admit(self.key)
        except Refused as exc:
            await _json_error(429, str(exc), "rate_limit_error",
                              headers={"Retry-After": str(exc.retry_after)})(scope, receive, send)
            return
        try:
            await self._queued(scope, receive, send)
        finally:
            self.state.limits.done(self.key, self.tokens)

    async def _queued(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        if state.waiting >= state.settings.max_queue:
            retry = str(max(1, state.waiting // 2))  # about how long the queue ahead takes, in seconds
            await _json_error(429, f"the server is busy ({state.waiting} requests waiting); retry after {retry} s",
                              "rate_limit_error", headers={"Retry-After": retry})(scope, receive, send)
            return
        state.in_flight += 1
        try:
            await self._run(scope, receive, send)
        finally:
            state.in_flight -= 1

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        if state.closed:
            await _json_error(503, "the server is shutting down", "server_error")(scope, receive, send)
            return
        try:
            stream = await asyncio.to_thread(self.job.start, state.model)
        except Exception as exc:
            await _error_for(exc)(scope, receive, send)
            return
        state.active.add(stream)
        gone = asyncio.Event()
        watcher = asyncio.create_task(self._watch(receive, stream, gone))
        try:
            if self.streaming:
                await self._stream(send, stream, gone)
            else:
                try:  # consumed on a thread of its own: the default executor's few would cap the batch
                    async with contextlib.aclosing(aiter_stream(stream)) as pieces:
                        async for _ in pieces:
                            pass
                    result = stream.result
                except Exception as exc:  # nothing is sent yet: a JSON error
                    await _error_for(exc)(scope, receive, send)
                    return
                if not gone.is_set():
                    body = ResponseBuilder(self.kind, state.model_id).complete(result)
                    await JSONResponse(body)(scope, receive, send)
        finally:
            watcher.cancel()
            state.active.discard(stream)
            stream.cancel()
            if stream.result is not None:
                state.metrics.observe_generation(stream.result.metrics)
                if state.alerts is not None:
                    state.alerts.observe_generation(stream.result.metrics.ttft_s, stream.result.metrics.gen_tps)
                self.tokens = stream.result.metrics.prompt_tokens + stream.result.metrics.generated_tokens
            if gone.is_set() and stream.result is not None:
                log.info("client went away: generation cancelled after %d tokens",
                         stream.result.metrics.generated_tokens)

    @staticmethod
    async def _watch(receive: Receive, stream: Stream, gone: asyncio.Event) -> None:
        """Cancel the generation when the client disconnects (the body is already read)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        if stream.result is None:  # not merely the end of our own response
            gone.set()
            stream.cancel()

    async def _stream(self, send: Send, stream: Stream, gone: asyncio.Event) -> None:
        builder = ResponseBuilder(self.kind, self.state.model_id)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})

        async def event(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        try:
            first = builder.first_chunk()
            if first:
                await event(sse(first))
            async with contextlib.aclosing(aiter_stream(stream)) as pieces:  # joins the worker thread on exit
                async for piece in pieces:
                    if gone.is_set():
                        break
                    await event(sse(builder.piece_chunk(piece)))
            if stream.result is not None and not gone.is_set():
                for chunk in builder.final_chunks(stream.result):
                    await event(sse(chunk))
                await event(sse("[DONE]"))
        except EdgeRuntimeError as exc:  # the status line is out already: report it as an event
            await event(sse(error_body(500, str(exc), "server_error")))
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class HeaderLimit:
    """Refuses requests whose headers exceed the limit, with a JSON 431."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > self.limit:
            message = f"request headers over the {self.limit}-byte limit"
            await _json_error(431, message)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(state: ServerState) -> Starlette:
    settings = state.settings

    def require_key(request: Request) -> ApiKey | None:
        """The request's key with its limits (None: unlimited), or 401."""
        header = request.headers.get("authorization") or ""
        if settings.keys:
            token = header[7:] if header.startswith("Bearer ") else ""
            found = settings.keys.get(key_hash(token)) if token else None
            if found is not None:
                return found
            if settings.api_key and authorized(settings.api_key, header):
                return None
            raise RequestError("missing or wrong API key (Authorization: Bearer KEY)", HTTPStatus.UNAUTHORIZED)
        if not authorized(settings.api_key, header):
            raise RequestError("missing or wrong API key (Authorization: Bearer KEY)", HTTPStatus.UNAUTHORIZED)
        return None

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": state.model_id})

    async def metrics(request: Request) -> Response:
        require_key(request)
        text = state.metrics.render(queue=state.waiting, busy=state.busy, slots=state.model.parallel,
                                    kv_cells=getattr(state.model.generator, "kv_cells", 0),
                                    kv_size=state.model.n_ctx * state.model.parallel)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def alerts(request: Request) -> Response:
        require_key(request)
        return JSONResponse({"alerts": state.alerts.evaluate() if state.alerts is not None else []})

    def on_done(method: str, path: str, status: int, seconds: float) -> None:
        state.metrics.observe_request(method, path, status, seconds)
        if state.alerts is not None and path.startswith("/v1/") and path != "/v1/alerts":
            state.alerts.observe_request(status)

    async def lora_adapters(request: Request) -> Response:
        require_key(request)
        scales = state.model.adapters
        return JSONResponse([{"id": i, "path": p, "scale": scales.get(p, 0.0)}
                             for i, p in enumerate(state.model.loaded_adapters)])

    async def models(request: Request) -> Response:
        require_key(request)
        return JSONResponse({"object": "list", "data": [
            {"id": state.model_id, "object": "model", "created": 0, "owned_by": "edge_runtime"}]})

    def generation(kind: str, parse: Callable[[dict[str, Any], int, Path | None], Job]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            key = require_key(request)
            body = parse_json_body(await _read_body(request, settings))
            job = parse(body, settings.max_tokens, settings.media_dir)
            if "lora" in body:
                job.settings = job.settings.replace(lora=parse_lora(body["lora"], state.model.loaded_adapters))
            streaming = body.get("stream", False)
            if not isinstance(streaming, bool):
                raise RequestError(f"stream must be true or false, not {streaming!r}")
            return GenerationResponse(state, job, kind, streaming, key)

        return endpoint

    async def on_request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        kind = {HTTPStatus.UNAUTHORIZED: "authentication_error",
                HTTPStatus.TOO_MANY_REQUESTS: "rate_limit_error"}.get(exc.status, "invalid_request_error")
        return _json_error(exc.status, str(exc), kind, headers=exc.headers)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            return _json_error(405, f"{request.method} is not allowed on {request.url.path}", headers=exc.headers)
        if exc.status_code == 404:
            return _json_error(404, f"no route {request.method} {request.url.path}")
        return _json_error(exc.status_code, str(exc.detail), headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        return _error_for(exc)

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # nobody reads it

    routes = [
        Route("/", page, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/lora-adapters", lora_adapters, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/alerts", alerts, methods=["GET"]),
        Route("/v1/completions", generation(COMPLETION, parse_completion), methods=["POST"]),
        Route("/v1/chat/completions", generation(CHAT, parse_chat), methods=["POST"]),
        Route("/v1/audio/transcriptions", speech_endpoint(state, "transcribe", require_key), methods=["POST"]),
        Route("/v1/audio/translations", speech_endpoint(state, "translate", require_key), methods=["POST"]),
    ]
    handlers = {RequestError: on_request_error, HTTPException: on_http_error, ClientDisconnect: on_disconnect,
                Exception: on_unexpected}
    middleware = [Middleware(AccessLog, on_done=on_done),
                  Middleware(HeaderLimit, limit=settings.max_header_bytes)]
    if settings.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"]))
    return Starlette(routes=routes, exception_handlers=handlers, middleware=middleware)  # type: ignore[arg-type]
