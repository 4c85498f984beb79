"""A base model says what it is (info, one warning per chat-style use), an instruction-tuned one does not warn."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

from edge_runtime import load_model
from edge_runtime.chat import ChatSession
from edge_runtime.gguf_file import read_header
from edge_runtime.model import model_kind


def test_the_default_model_is_reported_as_base(default_model_path):
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "info", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert json.loads(proc.stdout)["model"]["kind"] == "base"
    text = subprocess.run([sys.executable, "-m", "edge_runtime", "info"], capture_output=True, text=True, timeout=120)
    assert "kind               base  (continues text; chat needs an instruction-tuned Gemma)" in text.stdout


def test_kind_from_names_and_template(default_model_path, tmp_path):
    header = read_header(default_model_path)
    assert model_kind(header) == "base"
    it = tmp_path / "gemma-3-270m-it-Q4_K_M.gguf"
    shutil.copy(default_model_path, it)
    assert model_kind(read_header(it)) == "instruct"
    header.metadata["tokenizer.chat_template"] = "{{ messages }}"
    assert model_kind(header) == "instruct"
    header.path = tmp_path / "gemma-3-1b-pt.gguf"
    assert model_kind(header) == "base"


def test_chat_warns_once_per_model(default_model_path, caplog):
    caplog.set_level(logging.WARNING)
    with load_model(default_model_path, n_ctx=256, flash_attn=False) as model:
        for _ in range(3):
            ChatSession(model)
        warnings = [r for r in caplog.records if "base (pretrained) model" in r.getMessage()]
        assert len(warnings) == 1 and "instruction-tuned" in warnings[0].getMessage()
        model.generate("Hello", max_tokens=2)  # plain completion is what a base model is for: no warning
        assert len([r for r in caplog.records if "base (pretrained)" in r.getMessage()]) == 1


def test_chat_cli_warns_on_a_base_model(default_model_path):
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "chat", "--ctx", "256", "-n", "4", "--json"],
                          input="Hi\nHello\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr.count("is a base (pretrained) model") == 1
    assert len(proc.stdout.splitlines()) == 2
