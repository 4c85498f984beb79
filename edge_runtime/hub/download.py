"""One file from the Hub into huggingface-hub's cache, resumable across runs and checked by sha256.

huggingface-hub finds the file (endpoint, token, redirects, `X-Linked-Etag`) and owns the cache layout
(`models--org--name/blobs/<etag>`, `snapshots/<commit>/<file>`), so its own tools see what we pulled. The
transfer is ours, for two things it does not do: a download killed halfway continues from where it stopped
when run again (its temporary files are unique per process), and every byte is hashed as it arrives and
checked against the sha256 the Hub publishes for LFS files (it checks only the size over plain HTTP).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import PullError

CHUNK = 10 << 20  # what huggingface-hub reads at a time


def http_errors() -> tuple[type[BaseException], ...]:
    """The transport errors of whichever HTTP client this huggingface-hub uses (httpx2, httpx or requests)."""
    import importlib

    out: list[type[BaseException]] = [OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            out.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(out)


@dataclass(frozen=True)
class RemoteFile:
    repo_id: str
    filename: str
    commit: str
    size: int
    sha256: str | None  # LFS files only
    url: str
    etag: str


class _Hasher:
    """sha256 on a second thread (hashlib releases the GIL), so hashing overlaps the transfer."""

    def __init__(self, digest) -> None:
        import queue
        import threading

        self.digest = digest
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self.digest.update(chunk)

    def add(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def __enter__(self) -> "_Hasher":
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)
        self._thread.join()


def _storage(repo_id: str) -> Path:
    """The repo's folder in huggingface-hub's cache."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


def cache_paths(repo_id: str, f: RemoteFile) -> tuple[Path, Path]:
    """(blob, snapshot pointer) in huggingface-hub's cache."""
    storage = _storage(repo_id)
    return storage / "blobs" / f.etag, storage / "snapshots" / f.commit / f.filename


def _write_ref(repo_id: str, revision: str, commit: str) -> None:
    if revision == commit:
        return
    ref = _storage(repo_id) / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(ref.name + ".tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref)


def _link(blob: Path, pointer: Path) -> None:
    pointer.parent.mkdir(parents=True, exist_ok=True)
    tmp = pointer.with_name(pointer.name + ".tmp-link")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(blob, pointer.parent), tmp)
    os.replace(tmp, pointer)


def remove_cached(blob: Path, pointer: Path) -> None:
    """A file that failed its check goes, blob and link, so nothing can load it."""
    for p in (pointer, blob, blob.with_name(blob.name + ".edge-partial")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def download(f: RemoteFile, *, revision: str, token: str | None, progress: bool = True) -> Path:
    """The file's snapshot path, downloaded (or continued) and verified if it is not there yet."""
    from huggingface_hub.utils import build_hf_headers, get_session

    blob, pointer = cache_paths(f.repo_id, f)
    if pointer.exists() and blob.exists() and blob.stat().st_size == f.size:
        _write_ref(f.repo_id, revision, f.commit)
        return pointer
    blob.parent.mkdir(parents=True, exist_ok=True)
    partial = blob.with_name(blob.name + ".edge-partial")
    digest = hashlib.sha256()
    offset = partial.stat().st_size if partial.exists() else 0
    if offset > f.size:
        partial.unlink()
        offset = 0
    if offset:  # continue a pull killed earlier: hash what is there, then ask for the rest
        with partial.open("rb") as existing:
            while chunk := existing.read(CHUNK):
                digest.update(chunk)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=f.size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=f.filename, leave=False)
    headers = build_hf_headers(token=token)
    headers["Accept-Encoding"] = "identity"
    if offset < f.size:
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with get_session().stream("GET", f.url, headers=headers, follow_redirects=True, timeout=60) as resp:
                if resp.status_code not in (200, 206):
                    raise PullError(f"downloading {f.filename} from {f.repo_id}: HTTP {resp.status_code}")
                if offset and resp.status_code == 200:  # the server ignored Range: start again
                    offset, digest = 0, hashlib.sha256()
                    if bar:
                        bar.reset()
                with partial.open("ab" if offset else "wb") as out, _Hasher(digest) as hasher:
                    for chunk in resp.iter_bytes(CHUNK):
                        out.write(chunk)
                        hasher.add(chunk)
                        if bar:
                            bar.update(len(chunk))
        except http_errors() as exc:
            raise PullError(f"the download of {f.filename} from {f.repo_id} broke off ({exc}); run the same pull "
                            "again to continue where it stopped") from None
        finally:
            if bar:
                bar.close()
    got = partial.stat().st_size
    if got != f.size:
        raise PullError(f"the download of {f.filename} stopped at {got} of {f.size} bytes; run the same pull again "
                        "to continue")
    if f.sha256 and digest.hexdigest() != f.sha256:
        remove_cached(blob, pointer)
        raise PullError(f"{f.repo_id}/{f.filename} arrived corrupted (sha256 {digest.hexdigest()[:16]}..., the Hub "
                        f"says {f.sha256[:16]}...): it was deleted; run the pull again")
    os.replace(partial, blob)
    _link(blob, pointer)
    _write_ref(f.repo_id, revision, f.commit)
    return pointer
