"""`pull NAME`: a catalog id or `REPO_ID[:QUANT]` -> the GGUF (and its projector) in huggingface-hub's cache.

NAME follows llama.cpp's `-hf` convention: the repo's GGUF whose file name contains QUANT (case-insensitive;
without one, the best quant that fits this machine, see catalog.py). Files named `mmproj*` come along as the
model's projector, and a Gemma 3n audio encoder (`*.onnx`) as its ears.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import PullError
from edge_runtime.gguf_file import split_names
from edge_runtime.hub.download import RemoteFile, download, http_errors

QUANT_ORDER = ("F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0",
               "IQ4_XS", "IQ4_NL", "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M", "Q2_K")


@dataclass(frozen=True)
class PullRequest:
    name: str  # what the user typed, normalized: the key in the registry
    repo_id: str
    quant: str | None
    revision: str = "main"


@dataclass
class PulledModel:
    name: str
    repo_id: str
    revision: str
    commit: str
    model: str  # snapshot path of the GGUF (the first shard when split)
    quant: str
    size: int
    projectors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def parse_name(name: str) -> PullRequest:
    """`org/repo[:QUANT][@revision]` -> request (a catalog id is resolved by the caller)."""
    m = re.fullmatch(r"([\w.-]+/[\w.-]+)(?::([\w.-]+))?(?:@([\w./-]+))?", name.strip())
    if not m:
        raise PullError(f"{name!r} is neither a catalog id (edge-runtime recommend lists them) nor a Hugging Face "
                        "repo id like ggml-org/gemma-3-1b-it-GGUF[:Q4_K_M]")
    quant = m.group(2).upper() if m.group(2) else None
    normalized = m.group(1) + (f":{quant}" if quant else "")
    return PullRequest(normalized, m.group(1), quant, m.group(3) or "main")


def quant_of(filename: str) -> str | None:
    """The quant tag in a GGUF file name (`gemma-3-1b-it-Q4_K_M.gguf` -> Q4_K_M)."""
    upper = Path(filename).name.upper()
    for q in sorted(QUANT_ORDER, key=len, reverse=True):
        if re.search(rf"(^|[-_.]){re.escape(q)}([-_.]|$)", upper):
            return q
    return None


def _first_shard(name: str) -> bool:
    return split_names(name)[0] == name


def choose_files(siblings: dict[str, int], quant: str | None, fits=None) -> tuple[str, list[str], list[str]]:
    """(the model's first file, all its files (shards), projector files) among the repo's files."""
    ggufs = [n for n in siblings if n.lower().endswith(".gguf") and "mmproj" not in Path(n).name.lower()]
    if not ggufs:
        raise PullError("the repository has no GGUF model file")
    firsts = [n for n in ggufs if _first_shard(n)]
    if quant:
        matches = [n for n in firsts if quant.lower() in Path(n).name.lower()]
        if not matches:
            have = sorted({q for q in map(quant_of, firsts) if q})
            raise PullError(f"no GGUF with {quant!r} in its name; the repository has: {', '.join(have) or ', '.join(firsts)}")
        first = sorted(matches, key=len)[0]
    else:
        ranked = sorted(firsts, key=lambda n: QUANT_ORDER.index(quant_of(n)) if quant_of(n) else len(QUANT_ORDER))
        candidates = [n for n in ranked if fits is None or fits(_model_size(n, siblings))]
        if not candidates:
            smallest = ranked[-1]
            raise PullError(f"no quant of this model fits this machine's free memory (the smallest, {smallest}, needs "
                            f"about {_model_size(smallest, siblings) / 2**30:.1f} GB plus its context); pass :QUANT "
                            "to pull one anyway, or pick a smaller model (edge-runtime recommend)")
        first = candidates[0]
    parts = split_names(first)
    missing = [p for p in parts if p not in siblings]
    if missing:
        raise PullError(f"the repository's split model is incomplete: {', '.join(missing)} missing")
    projectors = sorted(n for n in siblings if ("mmproj" in Path(n).name.lower() and n.lower().endswith(".gguf"))
                        or n.lower().endswith(".onnx"))
    # several projector precisions: keep one per kind, preferring f16 (what mtmd is usually run with)
    by_kind: dict[str, str] = {}
    for p in projectors:
        kind = "onnx" if p.lower().endswith(".onnx") else "mmproj"
        if kind not in by_kind or "f16" in Path(p).name.lower():
            by_kind[kind] = p
    return first, parts, sorted(by_kind.values())


def _model_size(first: str, siblings: dict[str, int]) -> int:
    return sum(siblings.get(name, 0) for name in split_names(first))


def _hub_error(exc: Exception, repo_id: str, endpoint: str) -> PullError:
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError)

    if isinstance(exc, GatedRepoError):
        return PullError(f"{repo_id} is gated: accept its license at {endpoint}/{repo_id} with your Hugging Face "
                         "account, then create a read token (Settings > Access Tokens) and set HF_TOKEN=... "
                         "(or run `hf auth login`)")
    if isinstance(exc, RepositoryNotFoundError):
        return PullError(f"no repository {repo_id} on {endpoint} (or it is private: set HF_TOKEN)")
    if isinstance(exc, EntryNotFoundError):
        return PullError(f"{repo_id} has no such file: {exc}")
    if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError)):
        return PullError(f"offline (HF_HUB_OFFLINE is set or there is no network): {repo_id} has not been pulled "
                         f"on this machine. Pull it where there is a network (edge-runtime pull {repo_id})")
    return PullError(f"cannot reach {endpoint} for {repo_id} ({type(exc).__name__}: {str(exc)[:200]}); check the "
                     "network (or set HF_HUB_OFFLINE=1 to use what is already pulled)")


def pull(request: PullRequest, *, progress: bool = True, fits=None) -> PulledModel:
    """Download the model file(s) and projectors of `request`; verified; resumable; nothing half-written."""
    from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    endpoint = constants.ENDPOINT
    token = os.environ.get("HF_TOKEN") or None
    if constants.HF_HUB_OFFLINE:
        raise _hub_error(OfflineModeIsEnabled("offline"), request.repo_id, endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        info = api.model_info(request.repo_id, revision=request.revision, files_metadata=True, timeout=30)
    except (HfHubHTTPError, *http_errors()) as exc:
        raise _hub_error(exc, request.repo_id, endpoint) from None
    siblings = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    sha = {s.rfilename: s.lfs.sha256 for s in info.siblings or [] if s.lfs}
    first, parts, projectors = choose_files(siblings, request.quant, fits)
    paths: dict[str, Path] = {}
    for name in [*parts, *projectors]:
        try:
            meta = get_hf_file_metadata(hf_hub_url(request.repo_id, name, revision=request.revision, endpoint=endpoint),
                                        token=token, timeout=30)
        except (HfHubHTTPError, *http_errors()) as exc:
            raise _hub_error(exc, request.repo_id, endpoint) from None
        remote = RemoteFile(request.repo_id, name, meta.commit_hash or info.sha, int(meta.size or siblings[name]),
                            sha.get(name), meta.location, meta.etag)
        paths[name] = download(remote, revision=request.revision, token=token, progress=progress)
    return PulledModel(request.name, request.repo_id, request.revision, info.sha, str(paths[first]),
                       quant_of(first) or "unknown", sum(siblings[p] for p in parts),
                       [str(paths[p]) for p in projectors])
