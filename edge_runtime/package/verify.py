"""`edge-runtime verify DIR|DIR.zip`: is a bundle whole and usable? Every file's size and sha256 against the
manifest, every shard of the split present, the archive stored and aligned, and the model loaded by
llama.cpp (from the first shard, or in place inside the archive) for one greedy step."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import InvalidArgumentError
from edge_runtime.gguf_file import split_names


@dataclass
class VerifyReport:
    path: str
    problems: list[str] = field(default_factory=list)
    checked_files: int = 0
    greedy_token: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _hash_stream(f) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _one_step(model_loader) -> int:
    from edge_runtime.backend.core import ContextParams, LlamaContext

    with model_loader() as llama, LlamaContext(llama, ContextParams(n_ctx=64, n_batch=64, n_ubatch=64, n_threads=2,
                                                                    n_threads_batch=2)) as ctx:
        tokens = llama.tokenize("The", add_special=True, parse_special=False)
        return int(ctx.eval_logits(tokens)[-1].argmax())


def verify(path: str | Path, *, load: bool = True) -> VerifyReport:
    path = Path(path)
    report = VerifyReport(str(path))
    if path.is_dir():
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise InvalidArgumentError(f"{path} has no manifest.json: not a bundle from edge-runtime package")
        manifest = json.loads(manifest_path.read_text())
        opener = lambda name: open(path / name, "rb")  # noqa: E731
        exists = lambda name: (path / name).is_file()  # noqa: E731
        size = lambda name: (path / name).stat().st_size  # noqa: E731
    elif zipfile.is_zipfile(path):
        from edge_runtime.package.archive import check_archive, data_offset

        report.problems += check_archive(path)
        z = zipfile.ZipFile(path)
        names = {i.filename: i for i in z.infolist()}
        if "manifest.json" not in names:
            raise InvalidArgumentError(f"{path} has no manifest.json: not a bundle archive from edge-runtime package")
        manifest = json.loads(z.read("manifest.json"))
        opener = z.open
        exists = lambda name: name in names  # noqa: E731
        size = lambda name: names[name].file_size  # noqa: E731
    else:
        raise InvalidArgumentError(f"{path} is neither a bundle folder nor a zip archive")
    listed = {f["path"]: f for f in manifest.get("files", [])}
    for name in split_names(manifest["first_shard"]):
        if name not in listed:
            report.problems.append(f"the manifest does not list shard {name}")
    for name, entry in listed.items():
        if not exists(name):
            report.problems.append(f"missing: {name}")
            continue
        if size(name) != entry["size"]:
            report.problems.append(f"{name}: {size(name)} bytes, the manifest says {entry['size']}")
            continue
        with opener(name) as f:
            if _hash_stream(f) != entry["sha256"]:
                report.problems.append(f"{name}: sha256 differs from the manifest (the file is damaged)")
        report.checked_files += 1
    if load and not report.problems:
        from edge_runtime.backend.core import LlamaModel
        from edge_runtime.errors import ModelError

        first = manifest["first_shard"]
        try:
            if path.is_dir():
                report.greedy_token = _one_step(lambda: LlamaModel.load(path / first))
            elif len(split_names(first)) == 1:
                offset = data_offset(path, names[first])
                report.greedy_token = _one_step(lambda: LlamaModel.load_at(path, offset))
        except ModelError as exc:
            report.problems.append(f"llama.cpp cannot load {first}: {exc}")
    return report
