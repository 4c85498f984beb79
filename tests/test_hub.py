"""pull / list / rm / show / recommend and `--model NAME`, against a local stand-in for the Hub (tests/hub_standin.py)
serving the real default model, through the real huggingface-hub client in a fresh process each time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_runtime.hub.catalog import Entry, load_catalog, parse_size_mb, recommend, validate
from edge_runtime.hub.pull import choose_files, parse_name, quant_of
from edge_runtime.errors import InvalidArgumentError, PullError
from hub_standin import HubStandIn

ROOT = Path(__file__).resolve().parents[1]
REPO = "ggml-org/gemma-3-270m-GGUF"
FILE = "gemma-3-270m-Q4_K_M.gguf"


@pytest.fixture
def hub(default_model_path):
    with HubStandIn() as hub:
        hub.state.add(REPO, {FILE: default_model_path, "README.md": b"# a model card\n"})
        yield hub


@pytest.fixture
def env(tmp_path, hub):
    # conftest sets HF_HUB_OFFLINE=1 for every other test; here the "network" is the stand-in on 127.0.0.1
    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    return {**base, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"),
            "EDGE_RUNTIME_HOME": str(tmp_path / "er"), "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}


def cli(env, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def blobs(env) -> list[Path]:
    return sorted(Path(env["HF_HOME"]).rglob("blobs/*"))


def test_pull_by_repo_and_quant_then_run_by_name_list_show_rm(env, default_model_path):
    out = cli(env, "pull", f"{REPO}:q4_k_m", "--json")
    assert out.returncode == 0, out.stderr
    pulled = json.loads(out.stdout)
    assert pulled["name"] == f"{REPO}:Q4_K_M" and pulled["quant"] == "Q4_K_M"
    path = Path(pulled["model"])
    # huggingface-hub's own cache layout: snapshots/<commit>/<file> -> blobs/<sha256>
    assert path.parts[-3] == "snapshots" and path.is_symlink() and path.resolve().parent.name == "blobs"
    assert path.read_bytes() == default_model_path.read_bytes()

    seen = subprocess.run([sys.executable, "-c", f"from huggingface_hub import try_to_load_from_cache as t; "
                                                 f"print(t('{REPO}', '{FILE}'))"], capture_output=True, text=True,
                          env=env)
    assert seen.stdout.strip() == str(path)
    listed = json.loads(cli(env, "list", "--json").stdout)
    assert [(r["name"], r["quant"]) for r in listed] == [(f"{REPO}:Q4_K_M", "Q4_K_M")]
    gen = cli(env, "generate", "January, February,", "-n", "4", "--temperature", "0", "--model", f"{REPO}:Q4_K_M",
              "--json")
    assert gen.returncode == 0 and "March" in json.loads(gen.stdout)["text"], gen.stderr
    # transcribe resolves the name to the GGUF too (a text-only Gemma: the Gemma engine asks for an audio encoder)
    import numpy as np
    import soundfile as sf

    sf.write(Path(env["HF_HOME"]) / "a.wav", np.zeros(16000, np.float32), 16000)
    tr = cli(env, "transcribe", str(Path(env["HF_HOME"]) / "a.wav"), "--model", f"{REPO}:Q4_K_M")
    assert tr.returncode == 1 and "the gemma engine needs" in tr.stderr and "Traceback" not in tr.stderr
    show = json.loads(cli(env, "show", f"{REPO}:Q4_K_M", "--json").stdout)
    assert show["model"]["architecture"] == "gemma3" and show["recommended"]["n_ctx"] > 0
    # offline after the pull: nothing reaches the network, the model still runs
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    assert cli(offline, "generate", "Hi", "-n", "2", "--model", f"{REPO}:Q4_K_M").returncode == 0
    # rm: the entry and its blob go; the name no longer resolves, with a clear error
    assert cli(env, "rm", f"{REPO}:Q4_K_M").returncode == 0
    assert json.loads(cli(env, "list", "--json").stdout) == [] and not blobs(env)
    gone = cli(env, "generate", "Hi", "--model", f"{REPO}:Q4_K_M")
    assert gone.returncode == 1 and "edge-runtime pull" in gone.stderr and "Traceback" not in gone.stderr


def test_a_pull_killed_halfway_continues_where_it_stopped(env, hub):
    hub.state.slow_bytes_per_s = 40e6
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "pull", f"{REPO}:Q4_K_M"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    partial = None
    while time.monotonic() < deadline:
        parts = list(Path(env["HF_HOME"]).rglob("*.edge-partial"))
        if parts and parts[0].stat().st_size > 40 << 20:
            partial = parts[0]
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial is not None and partial.exists()
    done = partial.stat().st_size
    hub.state.slow_bytes_per_s = None
    out = cli(env, "pull", f"{REPO}:Q4_K_M", "--json")
    assert out.returncode == 0, out.stderr
    resumed_from = int(hub.state.ranges[-1].split("=")[1].rstrip("-"))
    assert resumed_from >= done - (4 << 20) and resumed_from > 0  # it asked only for the rest
    assert Path(json.loads(out.stdout)["model"]).stat().st_size == Path(blobs(env)[0]).stat().st_size


def test_a_corrupted_download_is_deleted_and_refused(env, hub, default_model_path):
    import hashlib

    hub.state.corrupt.add(hashlib.sha256(default_model_path.read_bytes()).hexdigest())
    out = cli(env, "pull", f"{REPO}:Q4_K_M")
    assert out.returncode == 1 and "arrived corrupted" in out.stderr and "run the pull again" in out.stderr
    assert not blobs(env) and not list(Path(env["HF_HOME"]).rglob(FILE))
    assert cli(env, "list", "--json").stdout.strip() == "[]"


def test_gated_repo_names_the_license_page_and_the_token(env, hub, default_model_path):
    hub.state.add("google/gemma-gated-GGUF", {FILE: default_model_path}, gated=True)
    out = cli(env, "pull", "google/gemma-gated-GGUF:Q4_K_M")
    assert out.returncode == 1
    assert f"{hub.url}/google/gemma-gated-GGUF" in out.stderr and "HF_TOKEN" in out.stderr
    ok = cli({**env, "HF_TOKEN": hub.state.token}, "pull", "google/gemma-gated-GGUF:Q4_K_M")
    assert ok.returncode == 0, ok.stderr


def test_offline_and_unreachable_are_clear_errors_not_hangs(env):
    off = cli({**env, "HF_HUB_OFFLINE": "1"}, "pull", f"{REPO}:Q4_K_M", timeout=60)
    assert off.returncode == 1 and "offline" in off.stderr and f"edge-runtime pull {REPO}" in off.stderr
    down = cli({**env, "HF_ENDPOINT": "http://127.0.0.1:9"}, "pull", f"{REPO}:Q4_K_M", timeout=120)
    assert down.returncode == 1 and "cannot reach" in down.stderr and "Traceback" not in down.stderr
    missing = cli(env, "pull", f"{REPO}:Q2_K")
    assert missing.returncode == 1 and "Q4_K_M" in missing.stderr  # says what the repo has


def test_projectors_come_along(env, hub):
    hub.state.add("ggml-org/gemma-3-4b-it-GGUF", {"gemma-3-4b-it-Q4_K_M.gguf": b"G" * 4096,
                                                  "gemma-3-4b-it-Q8_0.gguf": b"H" * 4096,
                                                  "mmproj-model-f16.gguf": b"M" * 2048})
    out = cli(env, "pull", "ggml-org/gemma-3-4b-it-GGUF:Q8_0", "--json")
    assert out.returncode == 0, out.stderr
    pulled = json.loads(out.stdout)
    assert pulled["model"].endswith("gemma-3-4b-it-Q8_0.gguf")
    assert [Path(p).name for p in pulled["projectors"]] == ["mmproj-model-f16.gguf"]


def test_choosing_files():
    sib = {"m-Q4_K_M.gguf": 100, "m-Q8_0.gguf": 200, "m-F16.gguf": 400, "mmproj-m-f16.gguf": 50,
           "mmproj-m-bf16.gguf": 50, "audio.onnx": 10, "README.md": 1}
    assert choose_files(sib, "Q8_0") == ("m-Q8_0.gguf", ["m-Q8_0.gguf"], ["audio.onnx", "mmproj-m-f16.gguf"])
    assert choose_files(sib, None)[0] == "m-F16.gguf"
    assert choose_files(sib, None, fits=lambda size: size <= 250)[0] == "m-Q8_0.gguf"
    with pytest.raises(PullError, match="no quant of this model fits"):
        choose_files(sib, None, fits=lambda size: False)
    split = {"big-Q4_K_M-00001-of-00002.gguf": 10, "big-Q4_K_M-00002-of-00002.gguf": 10}
    assert choose_files(split, "Q4_K_M")[1] == list(split)
    with pytest.raises(PullError, match="incomplete"):
        choose_files({"big-Q4_K_M-00001-of-00002.gguf": 10}, "Q4_K_M")
    assert quant_of("gemma-3-1b-it-Q4_K_M.gguf") == "Q4_K_M" and quant_of("x-q8_0.gguf") == "Q8_0"
    assert parse_name("org/repo:q4_k_m").name == "org/repo:Q4_K_M"
    with pytest.raises(PullError, match="neither a catalog id"):
        parse_name("not a name")


def test_catalog_is_consistent_and_covers_every_gemma():
    entries = load_catalog()
    assert validate(entries) == []
    packaged = ROOT / "edge_runtime" / "data" / "catalog.json"  # what an installed package reads
    assert packaged.read_text() == (ROOT / "models" / "catalog.json").read_text()
    families = {e.data["family"] for e in entries}
    assert families == {"gemma", "gemma2", "gemma3", "gemma3n", "gemma4"}
    ids = {e.id for e in entries}
    assert {"gemma-3-270m", "gemma-3-270m-it", "gemma-3-1b-it", "gemma-3n-e2b-it", "gemma-3n-e4b-it",
            "gemma-4-e2b-it", "gemma-4-e4b-it"} <= ids
    bad = Entry("x-it", {**entries[2].data, "kind": "base", "gguf": {"repo": "nope", "quants": {"Q4_K_M": 1}}})
    problems = validate([bad])
    assert any("-it" in p for p in problems) and any("ORG/NAME" in p for p in problems)
    assert any("bits per parameter" in p for p in problems)


def test_ram_formula_and_recommend():
    entries = load_catalog()
    e = next(x for x in entries if x.id == "gemma-3-1b-it")
    # 26 layers x 1 KV head x 256 x 2 (K, V) x 2 bytes x 4096 tokens = 104 MiB
    assert e.kv_mb(4096) == 104.0
    assert e.need_mb("Q4_K_M", 4096) == int(806 + 104 + 300 + 0.05 * 806)
    best = recommend(entries, 2048)[0]
    assert (best.entry.id, best.quant) == ("gemma-3-1b-it", "Q8_0")  # the biggest model that fits, best quant
    assert recommend(entries, 8192, "asr")[0].entry.data["modalities"].count("audio") == 1
    assert all(c.need_mb <= 1024 for c in recommend(entries, 1024))
    assert parse_size_mb("4G") == 4096 and parse_size_mb("512M") == 512 and parse_size_mb("1.5GB") == 1536
    with pytest.raises(InvalidArgumentError):
        recommend(entries, 4096, "dance")


def test_recommend_cli(env):
    out = cli(env, "recommend", "--ram", "2G", "--json")
    assert out.returncode == 0
    assert json.loads(out.stdout)[0]["id"] == "gemma-3-1b-it"
    text = cli(env, "recommend", "--ram", "2G")
    assert "edge-runtime pull gemma-3-1b-it:Q8_0" in text.stdout


def test_pull_convert_fetches_a_checkpoint_and_converts_it(env, hub, tmp_path, tmp_path_factory):
    from convert_support import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path_factory, "gemma3")
    hub.state.add("test/tiny-gemma-3-it", {p.name: p for p in ckpt.iterdir() if p.is_file() and not p.name.startswith(".")})
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"format": 2, "models": [{
        "id": "tiny-gemma-3-it", "family": "gemma3", "kind": "instruct", "params_m": 1, "modalities": ["text"],
        "checkpoint": "test/tiny-gemma-3-it", "context_length": 1024, "convert_only": True,
        "recommended_quant": "Q8_0", "kv": {"n_layer": 4, "n_head_kv": 1, "head_dim": 32}}]}))
    env = {**env, "EDGE_RUNTIME_CATALOG": str(catalog)}
    refused = cli(env, "pull", "tiny-gemma-3-it")
    assert refused.returncode == 1 and "--convert" in refused.stderr
    out = cli(env, "pull", "tiny-gemma-3-it", "--convert", "--json")
    assert out.returncode == 0, out.stderr
    pulled = json.loads(out.stdout)
    assert pulled["quant"] == "Q8_0" and Path(pulled["model"]).exists()
    gen = cli(env, "generate", "Hello", "-n", "3", "--temperature", "0", "--model", "tiny-gemma-3-it", "--json")
    assert gen.returncode == 0 and len(json.loads(gen.stdout)["tokens"]) == 3, gen.stderr
    assert cli(env, "rm", "tiny-gemma-3-it").returncode == 0 and not Path(pulled["model"]).exists()


def test_catalog_id_pull_and_package_by_name(env, hub, tmp_path):
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"format": 2, "models": [{
        "id": "gemma-tiny-it", "family": "gemma3", "kind": "instruct", "params_m": 268, "modalities": ["text"],
        "checkpoint": "google/gemma-3-270m-it", "context_length": 32768, "tasks": ["chat"],
        "gguf": {"repo": REPO, "quants": {"Q4_K_M": 241}}, "kv": {"n_layer": 18, "n_head_kv": 1, "head_dim": 256}}]}))
    env = {**env, "EDGE_RUNTIME_CATALOG": str(catalog)}
    # not pulled yet: package fetches it (the quant that fits a 4 GB phone), then bundles it
    out = cli(env, "package", "gemma-tiny-it", "--target", "android", "--ram", "4G", "-o", str(tmp_path / "pack"),
              "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["quantization"] == "Q4_K_M"
    listed = json.loads(cli(env, "list", "--json").stdout)
    assert [r["name"] for r in listed] == ["gemma-tiny-it"]
    assert cli(env, "verify", str(tmp_path / "pack")).returncode == 0
    again = cli(env, "pull", "gemma-tiny-it", "--json")  # already here: nothing downloaded twice
    assert again.returncode == 0 and len(hub.state.ranges) == 1
