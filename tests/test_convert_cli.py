"""Converter: command line, sharded and multimodal checkpoint layouts, imatrix, unpack."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from convert_support import compare, converted, gguf_logits, hf_logits, reference_tokens, tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory, "gemma3")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime", *args], capture_output=True, text=True)


def tensor_bytes(path) -> dict[str, bytes]:
    from gguf import GGUFReader

    return {t.name: (t.tensor_type.name, bytes(np.asarray(t.data).tobytes())) for t in GGUFReader(path).tensors}


def load_all(ckpt) -> dict[str, np.ndarray]:
    from edge_runtime.conversion.checkpoint import Checkpoint

    with Checkpoint(ckpt) as c:
        return {name: np.array(ref.raw()) for name, ref in c.tensors.items()}


def copy_tokenizer(src, dst) -> None:
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (dst / f).write_bytes((src / f).read_bytes())


def test_cli_convert_preset_json_and_unpack(tmp_path, tiny):
    out = tmp_path / "tiny.gguf"
    proc = run_cli("convert", str(tiny), "-o", str(out), "--preset", "balanced", "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["quantization"] == "q8_0" and manifest["architecture"] == "gemma3"
    assert json.loads((tmp_path / "tiny.gguf.json").read_text())["sha256"] == manifest["sha256"]

    proc = run_cli("convert", str(tiny), "-o", str(tmp_path / "t2.gguf"), "--preset", "max-efficiency")
    assert proc.returncode == 0, proc.stderr
    assert "max-efficiency  Q4_K_M" in proc.stdout and "MiB RAM" in proc.stdout

    proc = run_cli("unpack", str(out), str(tmp_path / "hf"), "--json")
    assert proc.returncode == 0, proc.stderr
    files = json.loads(proc.stdout)["files"]
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"} <= set(files)


@pytest.mark.parametrize("kind", ["gemma", "gemma2", "gemma3", "gemma4"])
def test_unpacked_tiny_round_trips(tmp_path, tmp_path_factory, kind):
    """f32 GGUF -> unpack -> convert f32 gives the same tensors; transformers on the unpacked folder
    gives exactly the original checkpoint's logits."""
    from edge_runtime.conversion import convert_checkpoint, unpack_gguf

    ckpt = tiny_checkpoint(tmp_path_factory, kind)
    first = converted(tmp_path_factory, ckpt, "f32")
    hf_dir = unpack_gguf(first, tmp_path / "hf")
    second = convert_checkpoint(hf_dir, tmp_path / "again.gguf", "f32", progress=False).path
    assert tensor_bytes(first) == tensor_bytes(second)
    tokens = reference_tokens(tmp_path_factory)
    unpacked = hf_logits(hf_dir, tokens)
    assert np.array_equal(unpacked, hf_logits(ckpt, tokens))
    stats = compare(unpacked, gguf_logits(second, tokens))
    assert stats["rel"] < 2e-3 and stats["top1"] == 1.0, stats
    from edge_runtime.conversion.verify import check_tokenizer

    check = check_tokenizer(second, hf_dir)  # the rebuilt tokenizer.model / tokenizer.json
    assert check is not None and check.ok, check.mismatches


def test_sharded_checkpoint(tmp_path, tmp_path_factory, tiny):
    from safetensors.numpy import save_file

    tensors = load_all(tiny)
    names = sorted(tensors)
    ckpt = tmp_path / "sharded"
    ckpt.mkdir()
    (ckpt / "config.json").write_text((tiny / "config.json").read_text())
    copy_tokenizer(tiny, ckpt)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, ckpt / fname)
        weight_map.update({n: fname for n in part})
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    from edge_runtime.conversion import convert_checkpoint

    result = convert_checkpoint(ckpt, tmp_path / "s.gguf", "f32", progress=False)
    assert len(result.manifest["source"]["shards"]) == 2
    assert tensor_bytes(result.path) == tensor_bytes(converted(tmp_path_factory, tiny, "f32"))


def test_multimodal_layout(tmp_path, tmp_path_factory, tiny):
    """Gemma3ForConditionalGeneration: text model under model.language_model, nested text_config, towers skipped."""
    from safetensors.numpy import save_file

    tensors = {("model.language_model." + n[len("model."):] if n.startswith("model.") else n): v for n, v in load_all(tiny).items()}
    tensors["model.vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.zeros((4, 3, 2, 2), np.float32)
    tensors["model.multi_modal_projector.mm_input_projection_weight"] = np.zeros((4, 64), np.float32)
    tensors["lm_head.weight"] = tensors["model.language_model.embed_tokens.weight"]
    ckpt = tmp_path / "mm"
    ckpt.mkdir()
    save_file(tensors, ckpt / "model.safetensors")
    text = json.loads((tiny / "config.json").read_text())
    cfg = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config": text,
           "vision_config": {"model_type": "siglip_vision_model"}}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    copy_tokenizer(tiny, ckpt)
    from edge_runtime.conversion import convert_checkpoint

    out = convert_checkpoint(ckpt, tmp_path / "mm.gguf", "f32", progress=False).path
    assert tensor_bytes(out) == tensor_bytes(converted(tmp_path_factory, tiny, "f32"))


def write_legacy_imatrix(path, entries: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name, values in entries.items():
            raw = name.encode()
            f.write(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", 1, values.size))
            f.write(values.astype("<f4").tobytes())


def test_imatrix_changes_quantization(tmp_path, tmp_path_factory, tiny):
    from gguf import GGUFReader

    from edge_runtime.conversion import convert_checkpoint

    f32 = converted(tmp_path_factory, tiny, "f32")
    rng = np.random.default_rng(0)
    entries = {t.name: rng.uniform(0.01, 10.0, int(t.shape[0])).astype(np.float32)
               for t in GGUFReader(f32).tensors if t.name.startswith("blk.") and len(t.shape) == 2}
    imatrix = tmp_path / "tiny.imatrix"
    write_legacy_imatrix(imatrix, entries)
    plain = convert_checkpoint(tiny, tmp_path / "plain.gguf", "Q4_0", progress=False).path
    weighted = convert_checkpoint(tiny, tmp_path / "weighted.gguf", "Q4_0", imatrix=imatrix, progress=False)
    assert weighted.manifest["imatrix"] == str(imatrix)
    a, b = tensor_bytes(plain), tensor_bytes(weighted.path)
    assert a.keys() == b.keys() and a["blk.0.ffn_up.weight"] != b["blk.0.ffn_up.weight"]
    tokens = reference_tokens(tmp_path_factory)
    ref = gguf_logits(f32, tokens)
    assert compare(ref, gguf_logits(weighted.path, tokens))["kl"] < 0.05


def test_preset_table_comes_before_the_work(tmp_path, tiny):
    proc = run_cli("convert", str(tiny), "-o", str(tmp_path / "t.gguf"), "--preset", "balanced", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    table = next(i for i, line in enumerate(lines) if "max-efficiency  Q4_K_M" in line)
    wrote = next(i for i, line in enumerate(lines) if line.startswith("wrote "))
    assert table < wrote and "MiB RAM" in lines[table]


def test_a_failed_verify_names_the_texts_the_tokens_and_whether_the_file_is_usable(tmp_path, tiny):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny, ckpt)
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    # The converter reads tokenizer.model; --verify compares with tokenizer.json when there is one.
    # A word-level tokenizer.json disagrees with the SentencePiece vocabulary on every text.
    other = Tokenizer(models.WordLevel({"<unk>": 3, "<bos>": 2, "Hello": 9}, unk_token="<unk>"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    other.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    other.save(str(ckpt / "tokenizer.json"))
    proc = run_cli("convert", str(ckpt), "-o", str(tmp_path / "v.gguf"), "--verify", "--no-progress")
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "8 of 8 texts tokenize differently" in out
    assert "'Hello, world! This is a test.': first difference at token 1: Hugging Face [9, 3, 3" in out
    assert "it is usable, but text tokenized differently" in out
