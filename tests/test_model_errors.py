"""Every bad model input gets a clear EdgeRuntimeError, never a crash inside llama.cpp."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edge_runtime import load_model
from edge_runtime.errors import (
    ContextSizeError,
    EdgeRuntimeError,
    InvalidArgumentError,
    InvalidModelError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from edge_runtime.gguf_file import read_header


def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model(tmp_path / "nope.gguf")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(InvalidModelError, match="directory.*edge-runtime convert"):
        load_model(tmp_path)


def test_not_a_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("this is a text file pretending to be a model\n" * 10)
    with pytest.raises(InvalidModelError, match="not a GGUF"):
        load_model(path)


def test_truncated_gguf(tmp_path, default_model_path):
    path = tmp_path / "truncated.gguf"
    with open(default_model_path, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(50 * 1024 * 1024))
    with pytest.raises(InvalidModelError, match="truncated"):
        load_model(path)


def test_truncated_inside_header(tmp_path, default_model_path):
    path = tmp_path / "header.gguf"
    with open(default_model_path, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(4096))
    with pytest.raises(InvalidModelError, match="truncated or corrupt"):
        load_model(path)


def test_corrupt_header(tmp_path, default_model_path):
    path = tmp_path / "corrupt.gguf"
    shutil.copy(default_model_path, path)
    with open(path, "r+b") as fh:
        fh.seek(24)
        fh.write(b"\xff" * 16)  # the first key's length becomes absurd
    with pytest.raises(InvalidModelError, match="corrupt"):
        load_model(path)


def _tiny_gguf(path, arch: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(128)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "alien.gguf"
    _tiny_gguf(path, "alienformer")
    with pytest.raises(UnsupportedModelError, match="alienformer"):
        load_model(path)


def test_gguf_llama_cpp_rejects_is_reported(tmp_path):
    """A known architecture with missing tensors: llama.cpp's own reason is passed on."""
    path = tmp_path / "broken.gguf"
    _tiny_gguf(path, "gemma3")
    with pytest.raises(InvalidModelError, match="could not be loaded") as err:
        load_model(path)
    assert "llama.cpp" in str(err.value)


def test_context_larger_than_trained(default_model_path):
    with pytest.raises(ContextSizeError, match="32768"):
        load_model(default_model_path, n_ctx=65536)


def test_context_too_small(default_model_path):
    with pytest.raises(ContextSizeError, match="too small"):
        load_model(default_model_path, n_ctx=8)


def test_bad_settings(default_model_path):
    with pytest.raises(InvalidArgumentError, match="KV cache type"):
        load_model(default_model_path, kv_cache_type="q3_weird")
    with pytest.raises(InvalidArgumentError, match="threads"):
        load_model(default_model_path, n_threads=0)
    with pytest.raises(InvalidArgumentError, match="flash attention"):
        load_model(default_model_path, kv_cache_type="q8_0", flash_attn=False)


def test_header_metadata_of_the_default_model(default_model_path):
    header = read_header(default_model_path)
    assert header.architecture == "gemma3"
    assert header.context_length == 32768 and header.sliding_window == 512
    assert header.vocab_size == 262144
    assert header.special_tokens()["bos"] == 2
    assert header.chat_template is None  # a base model


def test_q8_kv_cache_runs(default_model_path):
    with load_model(default_model_path, n_ctx=512, kv_cache_type="q8_0") as m:
        assert m.settings.flash_attn is True
        assert m.generate("The capital of France is", temperature=0, max_tokens=8).metrics.generated_tokens == 8


def test_all_errors_share_the_base_class():
    for cls in (ContextSizeError, InvalidArgumentError, InvalidModelError, ModelNotFoundError, UnsupportedModelError):
        assert issubclass(cls, EdgeRuntimeError)
