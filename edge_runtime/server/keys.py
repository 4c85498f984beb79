"""Several API keys, stored hashed, each with its own limits: requests and tokens per minute (sliding window)
and requests at once.

The keys file (`serve --keys-file FILE`, written by `edge-runtime keys add FILE --id NAME`) holds only the
sha256 of each key, so a copied file or a backup never gives a key away:

    {"keys": [{"id": "alice", "sha256": "...", "rpm": 60, "tpm": 20000, "concurrent": 2}]}

0 or a missing limit means none.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from edge_runtime.errors import InvalidArgumentError

WINDOW_S = 60.0


@dataclass(frozen=True)
class ApiKey:
    id: str
    sha256: str
    rpm: int = 0
    tpm: int = 0
    concurrent: int = 0


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_keys(path: str | os.PathLike[str]) -> dict[str, ApiKey]:
    """sha256 -> key, from a keys file; a clear error for anything malformed."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgumentError(f"cannot read the keys file {path} ({exc}); create it with "
                                   f"`edge-runtime keys add {path} --id NAME`") from None
    out: dict[str, ApiKey] = {}
    for i, item in enumerate(data.get("keys", []) if isinstance(data, dict) else []):
        try:
            key = ApiKey(str(item["id"]), str(item["sha256"]).lower(), int(item.get("rpm", 0)),
                         int(item.get("tpm", 0)), int(item.get("concurrent", 0)))
        except (KeyError, TypeError, ValueError):
            raise InvalidArgumentError(f"{path}: key #{i + 1} needs an id, a sha256 and whole-number limits") from None
        if len(key.sha256) != 64 or min(key.rpm, key.tpm, key.concurrent) < 0:
            raise InvalidArgumentError(f"{path}: key {key.id!r} has a malformed sha256 or a negative limit")
        out[key.sha256] = key
    if not out:
        raise InvalidArgumentError(f"the keys file {path} holds no keys; add one: edge-runtime keys add {path} --id NAME")
    return out


def add_key(path: str | os.PathLike[str], key_id: str, *, rpm: int = 0, tpm: int = 0, concurrent: int = 0) -> str:
    """Add a new random key to the file (created if missing, written atomically) and return it: it is shown
    once and never stored."""
    path = Path(path)
    data = {"keys": []}
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
    if any(k.get("id") == key_id for k in data["keys"]):
        raise InvalidArgumentError(f"{path} already has a key {key_id!r}; remove it first or pick another id")
    key = "er-" + secrets.token_urlsafe(32)
    data["keys"].append({"id": key_id, "sha256": key_hash(key), "rpm": rpm, "tpm": tpm, "concurrent": concurrent})
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=1)
    os.replace(tmp, path)
    return key


class Refused(Exception):
    """Over a limit: the status (429) and when to retry."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.status, self.retry_after = HTTPStatus.TOO_MANY_REQUESTS, retry_after


class KeyLimits:
    """Sliding one-minute windows of requests and tokens, and requests in flight, per key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._tokens: dict[str, collections.deque[tuple[float, int]]] = collections.defaultdict(collections.deque)
        self._active: dict[str, int] = collections.defaultdict(int)

    def _trim(self, key: ApiKey, now: float) -> None:
        reqs, toks = self._requests[key.id], self._tokens[key.id]
        while reqs and reqs[0] <= now - WINDOW_S:
            reqs.popleft()
        while toks and toks[0][0] <= now - WINDOW_S:
            toks.popleft()

    def admit(self, key: ApiKey | None) -> None:
        """Count a request in, or raise Refused naming the limit and when to retry."""
        if key is None:
            return
        now = time.monotonic()
        with self._lock:
            self._trim(key, now)
            reqs, toks = self._requests[key.id], self._tokens[key.id]
            if key.concurrent and self._active[key.id] >= key.concurrent:
                raise Refused(f"key {key.id!r} already has {key.concurrent} requests running (its limit)", 1)
            if key.rpm and len(reqs) >= key.rpm:
                raise Refused(f"key {key.id!r} made {key.rpm} requests in the last minute (its limit)",
                              int(reqs[0] + WINDOW_S - now) + 1)
            used = sum(n for _, n in toks)
            if key.tpm and used >= key.tpm:
                raise Refused(f"key {key.id!r} used {used} tokens in the last minute (its limit is {key.tpm})",
                              int(toks[0][0] + WINDOW_S - now) + 1)
            reqs.append(now)
            self._active[key.id] += 1

    def done(self, key: ApiKey | None, tokens: int) -> None:
        if key is None:
            return
        with self._lock:
            self._active[key.id] = max(0, self._active[key.id] - 1)
            if tokens:
                self._tokens[key.id].append((time.monotonic(), tokens))
