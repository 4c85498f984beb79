"""Listening and serving: the socket, uvicorn, timeouts on the wire, shutdown.

The socket is bound here (so a bad host or port is a clear error before the
server starts, and port 0 is known at once); uvicorn serves the ASGI app on
it. Our h11 protocol adds what uvicorn leaves out: a deadline for a request's
headers (a client that connects and sends nothing, or sends slowly, is cut off)
and JSON instead of plain text for requests that are not HTTP.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import socket
import threading
from http import HTTPStatus
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from edge_runtime.audio.service import SpeechService
from edge_runtime.errors import InvalidArgumentError
from edge_runtime.model import Model
from edge_runtime.server.alerts import Alerts, Watcher
from edge_runtime.server.app import ServerSettings, ServerState, build_app
from edge_runtime.server.responses import error_body

log = logging.getLogger("edge_runtime.server")


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and JSON protocol errors."""

    header_timeout_s = 30.0
    _deadline = None

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # the headers are in: the app's own timeout covers the body
        else:
            self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer, which data_received clears
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_timed_out(self) -> None:
        self._deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self._send_json_and_close(408, f"no complete request within {self.header_timeout_s:g} s")

    def send_400_response(self, msg: str) -> None:
        self._send_json_and_close(400, "invalid HTTP request (malformed request line or headers, headers over "
                                       f"{self.conn._max_incomplete_event_size} bytes, or a bad Content-Length)")

    def _send_json_and_close(self, status: int, message: str) -> None:
        body = json.dumps(error_body(status, message)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        # Written as bytes: h11 has no request to answer when none arrived in time.
        self.transport.write(b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode()) +
                             b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + body)
        self.transport.close()


class _Uvicorn(uvicorn.Server):
    """Cancels the generations in flight when shutdown starts (Ctrl-C or close())."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    async def shutdown(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        self.state.cancel_all()
        await super().shutdown(sockets)


def _loopback(address: str) -> bool:
    return ipaddress.ip_address(address.split("%")[0]).is_loopback


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket, or an error naming what to change."""
    where = f"{host}:{port}"
    if not 0 <= port <= 65535:
        raise InvalidArgumentError(f"cannot listen on {where}: a port is 0-65535; choose another --port")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidArgumentError(f"cannot listen on {where}: unknown host ({exc.strerror}); choose another --host") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        fix = {errno.EADDRINUSE: "the port is in use; choose another --port",
               errno.EADDRNOTAVAIL: "the address is not one of this machine's; choose another --host "
                                    "(127.0.0.1 for this machine only, 0.0.0.0 for every interface)",
               errno.EACCES: "ports below 1024 need privileges; choose a --port of 1024 or more"}
        raise InvalidArgumentError(f"cannot listen on {where}: {fix.get(exc.errno, exc.strerror)}") from None
    return sock


def speech_service(settings: ServerSettings, model: Model) -> SpeechService | None:
    """The engine behind /v1/audio/*: Whisper (faster-whisper), or Gemma hearing through its audio encoder."""
    from edge_runtime.audio.engines import available_engines

    asr = settings.asr
    if asr not in ("auto", "whisper", "gemma", "off"):
        raise InvalidArgumentError(f"--asr must be auto, whisper, gemma or off, not {asr!r}")
    if asr == "auto":
        asr = "whisper" if "whisper" in available_engines() else "gemma" if settings.asr_mmproj else "off"
    if asr == "off":
        return None
    if asr == "gemma":
        if not settings.asr_mmproj:
            raise InvalidArgumentError("--asr gemma needs the model's audio encoder: --mmproj audio.onnx (Gemma 3n) "
                                       "or its audio projector GGUF (Gemma 4)")
        return SpeechService("gemma", settings.asr_model or model.info.path, mmproj=settings.asr_mmproj)
    return SpeechService("whisper", settings.asr_model)


class OpenAIServer:
    """`with OpenAIServer(model, settings) as server: server.serve_forever()` (or `start()` in a thread)."""

    def __init__(self, model: Model, settings: ServerSettings | None = None) -> None:
        self.settings = settings or ServerSettings()
        self.model = model
        self.model_id = self.settings.model_id or Path(model.info.path).stem
        self.state = ServerState(model, self.settings, self.model_id, speech=speech_service(self.settings, model),
                                 alerts=Alerts(self.settings.alert_rules))
        self._watcher: Watcher | None = None
        self.socket = bind(self.settings.host, self.settings.port, self.settings.backlog)
        if not self.settings.api_key and not self.settings.keys and not _loopback(self.socket.getsockname()[0]):
            log.warning("listening on %s without an API key: anyone who can reach this address can use the model; "
                        "set --api-key-file FILE or $EDGE_RUNTIME_API_KEY", self.url)
        protocol = type("Protocol", (_Protocol,), {"header_timeout_s": self.settings.request_timeout_s})
        config = uvicorn.Config(build_app(self.state), http=protocol, lifespan="off", log_config=None,
                                access_log=False, server_header=False, timeout_keep_alive=self.settings.keep_alive_s,  # type: ignore[arg-type]
                                timeout_graceful_shutdown=30, backlog=self.settings.backlog,
                                h11_max_incomplete_event_size=4 * self.settings.max_header_bytes)
        self._uvicorn = _Uvicorn(config, self.state)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    @property
    def connections(self) -> set:
        """The open connections' protocol objects (each has a `transport`)."""
        return set(self._uvicorn.server_state.connections)

    def serve_forever(self) -> None:
        """Serve until Ctrl-C/SIGTERM (in the main thread) or close()."""
        self._start_watcher()
        self._uvicorn.run(sockets=[self.socket])

    def _start_watcher(self) -> None:
        s = self.settings
        if self._watcher is None and (s.alert_rules.any or s.metrics_json):
            self._watcher = Watcher(self.state.alerts, self.state.metrics.snapshot, s.alert_interval_s,
                                    s.metrics_json).start()

    def start(self) -> "OpenAIServer":
        self._thread = threading.Thread(target=self.serve_forever, name="edge-runtime-server", daemon=True)
        self._thread.start()
        while not self._uvicorn.started and self._thread.is_alive():
            self._thread.join(0.01)
        return self

    def close(self) -> None:
        """Stop accepting requests, cancel the generations in flight and wait for them to end.

        Afterwards no request touches the model, so the model can be closed.
        """
        self.state.cancel_all()
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.socket.close()
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self.state.speech is not None:
            self.state.speech.close()

    def __enter__(self) -> "OpenAIServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
