"""What a new user hits in the first hour with the command line: options where the README puts them,
errors naming the option, Ctrl-C, chat commands, hostile model files."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import time

import pytest

from edge_runtime import load_model
from edge_runtime.chat import ChatSession
from edge_runtime.generate import GenerationSettings


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime", *args], input=stdin, capture_output=True, text=True,
                          timeout=300)


def test_verbose_after_the_command_and_json_tokens(model):
    proc = run("generate", "Hello", "-n", "4", "-v", "--temperature", "0", "--json", "--ctx", "512")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert len(data["tokens"]) == 4 and model.detokenize(data["tokens"]) == data["text"]
    assert "DEBUG" in proc.stderr  # llama.cpp's logs, as -v promises
    assert run("-v", "generate", "Hello", "-n", "2", "--ctx", "512").returncode == 0


@pytest.mark.parametrize("args, message", [
    (["-n", "-5"], "--max-tokens must be at least 1, not -5"),
    (["-n", "0"], "--max-tokens must be at least 1, not 0"),
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--top-p", "2"], "--top-p must be in (0, 1]"),
])
def test_bad_sampling_options_name_the_option(args, message):
    proc = run("generate", "Hello", *args)
    assert proc.returncode == 1 and message in proc.stderr and "max_tokens" not in proc.stderr, proc.stderr


def test_help_texts():
    assert "default 8080" in run("serve", "--help").stdout
    assert "most tokens to generate" in run("generate", "--help").stdout


def test_ctrl_c_during_generate_exits_130_with_a_newline():
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "generate", "Once upon a time", "-n", "2000",
                             "--ctx", "4096"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.read(1)  # generation is under way
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert (first + out).endswith("\n")


def test_chat_commands_and_a_truncated_turn_in_json():
    long = "word " * 600  # more than the 256-token window
    proc = run("chat", "--json", "-n", "4", "--ctx", "256", "--temperature", "0",
               stdin=f"/foo\n/help\n{long}\nHi\n")
    assert proc.returncode == 0, proc.stderr
    assert "unknown command /foo; /help lists them" in proc.stderr and "/reset" in proc.stderr
    turns = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(turns) == 2  # /foo and /help went nowhere near the model
    assert turns[0]["truncated"] is True and turns[1]["truncated"] is False


def test_chat_session_forgets_old_shifted_messages(default_model_path):
    with load_model(default_model_path, n_ctx=256, flash_attn=False) as m:
        chat = ChatSession(m, settings=GenerationSettings(max_tokens=1, temperature=0), keep_shifted=8)
        for i in range(150):
            chat.ask(f"Message number {i} with a few words to fill the window.")
        assert len(chat.messages) <= 8 + len(chat.window_messages) < 60
        assert chat.messages[-2].content.startswith("Message number 149")


def test_listing_no_microphones_is_not_an_error():
    code = ("import sys, edge_runtime.audio.microphone as mic; mic.list_input_devices = lambda: []; "
            "from edge_runtime.cli import main; sys.exit(main(['listen', '--list-devices']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "no input devices" in proc.stderr


def test_a_load_failure_names_its_cause_not_an_earlier_warning(default_model_path, tmp_path):
    path = tmp_path / "missing-tensor.gguf"
    data = bytearray(default_model_path.read_bytes())
    name = b"blk.0.attn_q.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8
    data[at:at + len(name)] = b"blk.0.attn_x.weight"  # a required tensor goes missing
    path.write_bytes(data)
    proc = run("generate", "Hi", "-m", str(path))
    assert proc.returncode == 1 and "attn_q" in proc.stderr, proc.stderr
    assert "control-type" not in proc.stderr and "Traceback" not in proc.stderr
