"""A local OpenAI-compatible HTTP server over one loaded model (starlette on uvicorn).

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/completions`,
`POST /v1/chat/completions` (both with `"stream": true` as server-sent events).
Chat requests go through `ChatSession`, so a conversation longer than the
window is fitted instead of failing, and the KV cache is reused between
requests that share a prefix.

Modules: `requests` (bodies -> validated jobs), `responses` (OpenAI bodies and
chunks), `auth` (API keys), `app` (routes; generations scheduled by the model), `runner`
(socket, uvicorn, wire timeouts, shutdown).
"""

from edge_runtime.server.app import ServerSettings
from edge_runtime.server.auth import resolve_api_key
from edge_runtime.server.requests import RequestError, parse_messages
from edge_runtime.server.runner import OpenAIServer

__all__ = ["OpenAIServer", "RequestError", "ServerSettings", "parse_messages", "resolve_api_key"]
