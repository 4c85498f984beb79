"""Converter, bad inputs: each gives a ConversionError (or InvalidArgumentError) naming the file and the problem."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from convert_support import tiny_checkpoint

from edge_runtime.errors import ConversionError, InvalidArgumentError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory, "gemma3")


def clone(src: Path, dst: Path) -> Path:
    """A copy of a checkpoint whose big files are hard links (edit those by rewriting, never in place)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name.startswith("."):
            continue
        if f.suffix == ".safetensors":
            os.link(f, dst / f.name)
        else:
            shutil.copy(f, dst / f.name)
    return dst


def convert(src, out, outtype="f32", **kw):
    from edge_runtime.conversion import convert_checkpoint

    return convert_checkpoint(src, out, outtype, progress=False, **kw)


def rewrite_shard(path: Path, drop: str | None = None, header_edit=None) -> None:
    """Rewrite a safetensors file without tensor `drop` (a fresh file, the original link untouched)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    new_header, chunks, offset = {}, [], 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if name == drop:
            continue
        b, e = info["data_offsets"]
        chunks.append(data[b:e])
        new_header[name] = dict(info, data_offsets=[offset, offset + (e - b)])
        offset += e - b
    if meta:
        new_header["__metadata__"] = meta
    raw = json.dumps(new_header).encode()
    raw += b" " * (-len(raw) % 8)
    path.unlink()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(chunks))


def test_missing_shard(tmp_path, tiny):
    ckpt = clone(tiny, tmp_path / "ckpt")
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                                           "model.norm.weight": "model-00002-of-00002.safetensors"}}
    os.rename(ckpt / "model.safetensors", ckpt / "model-00001-of-00002.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match=r"model-00002-of-00002\.safetensors.*missing"):
        convert(ckpt, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_truncated_shard(tmp_path, tiny):
    ckpt = clone(tiny, tmp_path / "ckpt")
    shard = ckpt / "model.safetensors"
    data = shard.read_bytes()
    shard.unlink()
    shard.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ConversionError, match=r"model\.safetensors: truncated shard"):
        convert(ckpt, tmp_path / "out.gguf")


def test_not_a_safetensors_file(tmp_path, tiny):
    ckpt = clone(tiny, tmp_path / "ckpt")
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(ConversionError, match=r"model\.safetensors: truncated"):
        convert(ckpt, tmp_path / "out.gguf")


def test_unknown_architecture(tmp_path, tiny):
    ckpt = clone(tiny, tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match=r"config\.json: unknown architecture 'LlamaForCausalLM'"):
        convert(ckpt, tmp_path / "out.gguf")


def test_config_and_tensor_shapes_disagree(tmp_path, tiny):
    ckpt = clone(tiny, tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match=r"model\.safetensors: tensor model\.layers\.0\.mlp\.\w+_proj\.weight has shape"):
        convert(ckpt, tmp_path / "out.gguf")


def test_missing_tensor(tmp_path, tiny):
    ckpt = clone(tiny, tmp_path / "ckpt")
    rewrite_shard(ckpt / "model.safetensors", drop="model.layers.1.self_attn.k_proj.weight")
    with pytest.raises(ConversionError, match=r"lacks tensors .*blk\.1\.attn_k\.weight"):
        convert(ckpt, tmp_path / "out.gguf")


def test_missing_config(tmp_path, tiny):
    ckpt = clone(tiny, tmp_path / "ckpt")
    (ckpt / "config.json").unlink()
    with pytest.raises(ConversionError, match=r"config\.json: file is missing"):
        convert(ckpt, tmp_path / "out.gguf")


def test_duplicate_tokens(tmp_path, tiny):
    from edge_runtime.conversion.tokenizer import Vocab, read_sentencepiece, write_sentencepiece

    ckpt = clone(tiny, tmp_path / "ckpt")
    pieces, scores, types, ids = read_sentencepiece(ckpt / "tokenizer.model")
    pieces[1000] = pieces[999]
    vocab = Vocab("llama", pieces, scores, types, ckpt / "tokenizer.model",
                  special_ids={k: v for k, v in ids.items() if v >= 0})
    (ckpt / "tokenizer.model").unlink()
    write_sentencepiece(ckpt / "tokenizer.model", vocab)
    with pytest.raises(ConversionError, match=r"tokenizer\.model: duplicate token .*ids 999 and 1000"):
        convert(ckpt, tmp_path / "out.gguf")


def test_no_tokenizer(tmp_path, tiny):
    ckpt = clone(tiny, tmp_path / "ckpt")
    (ckpt / "tokenizer.model").unlink()
    with pytest.raises(ConversionError, match=r"no tokenizer"):
        convert(ckpt, tmp_path / "out.gguf")


def test_not_enough_disk_space(tmp_path):
    from edge_runtime.conversion.writer import check_free_space

    with pytest.raises(ConversionError, match=r"not enough disk space for model\.gguf: need about \d+ MiB"):
        check_free_space(tmp_path, 1 << 62, "model.gguf")
    check_free_space(tmp_path, 1, "model.gguf")


def test_bad_outtype_and_preset(tmp_path, tiny):
    with pytest.raises(InvalidArgumentError, match="unknown output type 'q3_x'"):
        convert(tiny, tmp_path / "out.gguf", "q3_x")
    with pytest.raises(InvalidArgumentError, match="unknown preset"):
        convert(tiny, tmp_path / "out.gguf", None, preset="tiny")


def test_imatrix_missing_file(tmp_path, tiny):
    with pytest.raises(ConversionError, match=r"nope\.imatrix: imatrix file is missing"):
        convert(tiny, tmp_path / "out.gguf", "Q4_K_M", imatrix=tmp_path / "nope.imatrix")


def test_not_a_folder_nor_repo_id(tmp_path):
    with pytest.raises(ConversionError, match="no such folder, and not a Hugging Face repo id"):
        convert(tmp_path / "does" / "not" / "exist", tmp_path / "out.gguf")


def test_cli_reports_one_line_error(tmp_path, tiny):
    ckpt = clone(tiny, tmp_path / "ckpt")
    (ckpt / "config.json").write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "convert", str(ckpt), "-o", str(tmp_path / "o.gguf")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("edge-runtime: error: ") and "config.json: invalid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_repo_id_offline_gives_clear_error(tmp_path, monkeypatch):
    """A repo id goes through huggingface_hub; offline (as in the tests) that fails with a one-line error."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConversionError, match=r"google/not-a-real-gemma: could not download from the Hugging Face hub"):
        convert("google/not-a-real-gemma", tmp_path / "out.gguf")
