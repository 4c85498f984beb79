"""Bundles from the real default model: shards under the limit load in llama.cpp from the first shard with the
source's greedy tokens; the manifest follows its schema and its hashes verify; an archive's entries are stored
and page-aligned and the model loads in place through llama.cpp's FILE* loader; verify catches a missing
shard and a flipped byte."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edge_runtime import load_model
from edge_runtime.backend.core import LlamaModel
from edge_runtime.errors import InvalidArgumentError
from edge_runtime.gguf_file import read_header
from edge_runtime.package.archive import ALIGNMENT, data_offset
from edge_runtime.package.bundle import BundleSettings, package
from edge_runtime.package.verify import verify

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "January, February, March, April,"


@pytest.fixture(scope="module")
def want(default_model_path):
    with load_model(default_model_path, n_ctx=256) as m:
        return m.generate(PROMPT, temperature=0, max_tokens=12).tokens


def _schema_check(manifest: dict) -> None:
    import jsonschema

    schema = json.loads((ROOT / "edge_runtime" / "package" / "manifest.schema.json").read_text())
    jsonschema.validate(manifest, schema)


def test_ios_bundle_shards_under_the_limit_load_from_the_first(tmp_path, default_model_path, want):
    out = tmp_path / "ios"
    manifest = package(default_model_path, out, BundleSettings("ios", max_shard=100 << 20, progress=False))
    _schema_check(manifest)
    shards = [out / f["path"] for f in manifest["files"] if f["role"] == "model"]
    assert len(shards) == 3 and all(s.stat().st_size <= 100 << 20 or read_header(s).tensors.__len__() == 1
                                    for s in shards)
    assert [s.name for s in shards] == [f"gemma-3-270m-q4_k_m-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    for s in shards:  # every shard's tensor data at a 32-byte aligned file offset
        h = read_header(s)
        assert h.data_offset % 32 == 0 and all(t.offset % 32 == 0 for t in h.tensors)
        assert h.metadata["split.count"] == 3
    assert manifest["first_shard"] == "Models/" + shards[0].name
    assert manifest["recommended"]["n_ctx"] >= 512 and manifest["architecture"] == "gemma3"
    assert "ondemand-tags.json" in {p.name for p in out.iterdir()}
    with load_model(out / manifest["first_shard"], n_ctx=256) as m:
        assert m.generate(PROMPT, temperature=0, max_tokens=12).tokens == want
    report = verify(out)
    assert report.ok and report.checked_files == 3 and report.greedy_token is not None


def test_android_archive_is_stored_aligned_and_loads_in_place(tmp_path, default_model_path, want):
    out = tmp_path / "android"
    manifest = package(default_model_path, out, BundleSettings("android", zip=True, progress=False))
    assert len(manifest["files"]) == 1  # 241 MB fits one 1.5 GB pack file
    gradle = (out / "build.gradle").read_text()
    assert "noCompress" in gradle and "packName = \"android\"" in gradle
    assert manifest["first_shard"].startswith("src/main/assets/models/")
    archive = out.with_name("android.zip")
    with zipfile.ZipFile(archive) as z:
        entry = z.getinfo(manifest["first_shard"])
        assert entry.compress_type == zipfile.ZIP_STORED
    offset = data_offset(archive, entry)
    assert offset % ALIGNMENT == 0
    # as an app does with an asset's file descriptor: llama.cpp reads the GGUF from that offset, mapped in place
    from edge_runtime.backend.core import ContextParams, LlamaContext

    with LlamaModel.load_at(archive, offset) as llama, LlamaContext(llama, ContextParams(n_ctx=256)) as ctx:
        tokens = llama.tokenize(PROMPT, add_special=True, parse_special=False)
        logits = ctx.eval_logits(tokens)
        assert int(logits[-1].argmax()) == want[0]
    from edge_runtime.package.verify import _one_step

    report = verify(archive)
    assert report.ok and report.greedy_token == _one_step(lambda: LlamaModel.load(default_model_path))


def test_verify_catches_a_missing_shard_and_a_flipped_byte(tmp_path, default_model_path):
    out = tmp_path / "b"
    manifest = package(default_model_path, out, BundleSettings("ios", max_shard=100 << 20, progress=False))
    last = out / manifest["files"][-1]["path"]
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x01
    last.write_bytes(bytes(data))
    report = verify(out)
    assert not report.ok and any("sha256 differs" in p for p in report.problems)
    (out / manifest["files"][1]["path"]).unlink()
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "verify", str(out)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 1 and "missing:" in proc.stdout


def test_cli_package_pi_and_limits(tmp_path, default_model_path):
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "package", str(default_model_path), "--target", "pi",
                           "-o", str(tmp_path / "pi"), "--ram", "2G", "--json"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert (tmp_path / "pi" / "serve.env").read_text().count(manifest["first_shard"]) == 1
    assert (tmp_path / "pi" / "systemd" / "edge-runtime-serve.service.in").exists()
    with pytest.raises(InvalidArgumentError, match="over the ios store's per-file limit"):
        package(default_model_path, tmp_path / "x", BundleSettings("ios", max_shard=1 << 30, progress=False))
    with pytest.raises(InvalidArgumentError, match="needs about .* MB"):
        package(default_model_path, tmp_path / "y", BundleSettings("android", ram_mb=1536, progress=False))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # nothing half-written
