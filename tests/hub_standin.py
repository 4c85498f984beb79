"""A local stand-in for the Hugging Face Hub on 127.0.0.1, behaving as the real Hub does for what `pull` uses.

- `GET /api/models/{repo}[/revision/{rev}]?blobs=true`: model info with siblings (size, LFS sha256);
  `GET /api/models/{repo}/tree/{rev}`: the file list snapshot_download reads.
- `HEAD|GET /{repo}/resolve/{rev}/{file}`: for LFS files a 302 to the CDN (another host: another port here)
  with `X-Repo-Commit`, `X-Linked-Etag` (the sha256) and `X-Linked-Size`; small files served directly with
  `ETag` (their git blob id).
- The CDN answers `Range` requests with 206, can go slow (so a test can kill a download halfway), and can
  be told to corrupt a file (a flipped byte).
- Gated repositories answer 401 with `X-Error-Code: GatedRepo` to requests without an accepted token.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False
    lfs_min: int = 1024  # files at least this big are LFS (served from the CDN)


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    token: str = "hf_accepted"
    slow_bytes_per_s: float | None = None
    corrupt: set[str] = field(default_factory=set)  # sha256 of files served with a flipped byte
    ranges: list[str] = field(default_factory=list)  # Range headers the CDN received
    cdn_url: str = ""

    def add(self, repo_id: str, files: dict[str, bytes | Path], **kw) -> Repo:
        repo = Repo({k: v.read_bytes() if isinstance(v, Path) else v for k, v in files.items()}, **kw)
        self.repos[repo_id] = repo
        return repo


_HASH_CACHE: dict[tuple[str, int], tuple[bytes, str]] = {}


def _cached(kind: str, data: bytes, compute) -> str:
    """A served file's hash, computed once (the real Hub stores them; hashing per request would make the
    stand-in, not the client, the bottleneck)."""
    hit = _HASH_CACHE.get((kind, id(data)))
    if hit is None or hit[0] is not data:
        hit = (data, compute(data))
        _HASH_CACHE[(kind, id(data))] = hit
    return hit[1]


def _sha(data: bytes) -> str:
    return _cached("sha256", data, lambda d: hashlib.sha256(d).hexdigest())


def _git_oid(data: bytes) -> str:
    return _cached("git", data, lambda d: hashlib.sha1(b"blob %d\0" % len(d) + d).hexdigest())


class _Base(http.server.BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)


class _HubHandler(_Base):
    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._send(404, json.dumps({"error": "Repository not found"}).encode(),
                       {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"})
            return None
        if repo.gated and self.headers.get("Authorization") != f"Bearer {self.state.token}":
            msg = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            self._send(401, json.dumps({"error": msg}).encode(),
                       {"X-Error-Code": "GatedRepo", "X-Error-Message": msg, "Content-Type": "application/json"})
            return None
        return repo

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def _handle(self, head: bool) -> None:
        path = unquote(urlparse(self.path).path)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            repo = self._repo(m.group(1))
            if repo is None:
                return
            siblings = []
            for name, data in repo.files.items():
                item: dict = {"rfilename": name, "size": len(data), "blobId": _git_oid(data)}
                if len(data) >= repo.lfs_min:
                    item["lfs"] = {"sha256": _sha(data), "size": len(data), "pointerSize": 134}
                siblings.append(item)
            body = json.dumps({"id": m.group(1), "modelId": m.group(1), "sha": repo.commit, "siblings": siblings,
                               "gated": "manual" if repo.gated else False, "private": False}).encode()
            self._send(200, body, {"Content-Type": "application/json"}, head)
            return
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?", path)
        if m:  # list_repo_tree (snapshot_download): one page, every file
            repo = self._repo(m.group(1))
            if repo is None:
                return
            items = []
            for name, data in repo.files.items():
                item: dict = {"type": "file", "path": name, "size": len(data), "oid": _git_oid(data)}
                if len(data) >= repo.lfs_min:
                    item["lfs"] = {"oid": _sha(data), "size": len(data), "pointerSize": 134}
                items.append(item)
            self._send(200, json.dumps(items).encode(), {"Content-Type": "application/json"}, head)
            return
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo = self._repo(m.group(1))
            if repo is None:
                return
            data = repo.files.get(m.group(3))
            if data is None:
                self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit})
                return
            common = {"X-Repo-Commit": repo.commit}
            if len(data) >= repo.lfs_min:
                sha = _sha(data)
                self._send(302, b"", {**common, "Location": f"{self.state.cdn_url}/{sha}?file={m.group(3)}",
                                      "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": len(data),
                                      "ETag": f'"{_git_oid(data)}"'}, head)
            else:
                self._send(200, data, {**common, "ETag": f'"{_git_oid(data)}"'}, head)
            return
        self._send(404, b"not found")


class _CdnHandler(_Base):
    def do_GET(self) -> None:
        sha = urlparse(self.path).path.rsplit("/", 1)[-1]
        data = next((d for r in self.state.repos.values() for d in r.files.values() if _sha(d) == sha), None)
        if data is None:
            self._send(404, b"no such object")
            return
        if sha in self.state.corrupt:
            data = data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:]
        start = 0
        rng = self.headers.get("Range")
        self.state.ranges.append(rng or "")
        if rng:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        chunk = 64 * 1024
        try:
            for i in range(start, len(data), chunk):
                self.wfile.write(data[i:i + chunk])
                if self.state.slow_bytes_per_s:
                    time.sleep(chunk / self.state.slow_bytes_per_s)
        except (BrokenPipeError, ConnectionResetError):
            pass


class HubStandIn:
    """`with HubStandIn() as hub:` then HF_ENDPOINT=hub.url."""

    def __init__(self) -> None:
        self.state = HubState()
        self._servers = []
        for handler in (_HubHandler, _CdnHandler):
            cls = type(handler.__name__, (handler,), {"state": self.state})
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), cls)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.state.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}/cdn"

    def close(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()

    def __enter__(self) -> "HubStandIn":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
