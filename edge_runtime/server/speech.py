"""`POST /v1/audio/transcriptions` and `/v1/audio/translations`, as the official `openai` client sends them
(multipart: file, model, language, response_format, ...), served by the library's SpeechService."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from edge_runtime.audio.transcribe import TranscriptionResult
from edge_runtime.errors import AudioError, EdgeRuntimeError, InvalidArgumentError
from edge_runtime.server.keys import Refused
from edge_runtime.server.requests import RequestError

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


def openai_body(result: TranscriptionResult, fmt: str, task: str, language: str | None) -> Response:
    if fmt == "text":
        return PlainTextResponse(result.text + "\n")
    if fmt == "srt":
        return PlainTextResponse(result.to_srt())
    if fmt == "vtt":
        return PlainTextResponse(result.to_vtt(), media_type="text/vtt")
    duration = float(result.metrics.get("audio_seconds", 0.0))
    usage = {"type": "duration", "seconds": int(round(duration))}
    if fmt == "json":
        return JSONResponse({"text": result.text, "usage": usage})
    segments = [{"id": i, "seek": 0, "start": s.start, "end": s.end, "text": s.text, "tokens": [],
                 "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0}
                for i, s in enumerate(result.segments)]
    return JSONResponse({"task": task, "language": language or "english", "duration": duration, "text": result.text,
                         "segments": segments, "usage": usage})


def speech_endpoint(state: Any, task: str, require_key) -> Any:
    async def endpoint(request: Request) -> Response:
        key = require_key(request)
        limit = state.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestError(f"the upload is {int(declared)} bytes; this server takes at most {limit}",
                               HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            form = await request.form(max_files=1, max_fields=20)
        except Exception as exc:  # malformed multipart
            raise RequestError(f"send the audio as multipart/form-data with a `file` field ({exc})") from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise RequestError("no `file` in the form: send the audio as the multipart field `file`")
        fmt = str(form.get("response_format") or "json")
        if fmt not in FORMATS:
            raise RequestError(f"response_format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        language = form.get("language") or None
        data = await upload.read()
        if len(data) > limit:
            raise RequestError(f"the audio file is {len(data)} bytes; this server takes at most {limit}",
                               HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        if not data:
            raise RequestError("the audio file is empty")
        service = state.speech
        if service is None:
            raise RequestError("this server has no speech engine (start it with --asr whisper|gemma)",
                               HTTPStatus.NOT_FOUND)
        try:
            state.limits.admit(key)
        except Refused as exc:
            raise RequestError(str(exc), exc.status, {"Retry-After": str(exc.retry_after)}) from None
        try:
            result = await run_in_threadpool(service.transcribe, data, task=task,
                                             language=str(language) if language else None,
                                             suffix=Path(upload.filename or "").suffix)
        except (AudioError, InvalidArgumentError) as exc:  # unreadable audio, a task the model cannot do
            raise RequestError(str(exc)) from None
        except EdgeRuntimeError as exc:  # the engine cannot run (no Whisper model installed, ...)
            raise RequestError(str(exc), HTTPStatus.SERVICE_UNAVAILABLE) from None
        finally:
            state.limits.done(key, 0)
        return openai_body(result, fmt, task, str(language) if language else None)

    return endpoint
