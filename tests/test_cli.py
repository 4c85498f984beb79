"""The `edge-runtime` command line, run as a real subprocess on the default model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args], input=stdin, capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def test_generate_streams_text(model):
    proc = run("generate", "The capital of France is", "-n", "16", "--temperature", "0", "--ctx", "2048", "--no-flash-attn")
    expected = model.generate("The capital of France is", temperature=0, max_tokens=16).text
    assert proc.stdout == expected + "\n"


def test_generate_json():
    proc = run("generate", "Hello", "-n", "8", "--temperature", "0", "--json", "--ctx", "512")
    data = json.loads(proc.stdout)
    assert set(data) >= {"text", "metrics"}
    assert set(data["metrics"]) == {"prompt_tokens", "reused_tokens", "generated_tokens", "ttft_s", "prompt_tps", "gen_tps", "peak_rss_mb",
                                     "media_encode_s"}
    assert data["metrics"]["generated_tokens"] == 8


def test_chat_from_a_pipe_one_json_object_per_turn():
    turns = "Hello\nWhat is two plus two?\n/reset\nGoodbye\n"
    proc = run("chat", "--json", "-n", "8", "--temperature", "0", "--ctx", "512", "--system", "Be brief.", stdin=turns)
    lines = [json.loads(l) for l in proc.stdout.splitlines()]
    assert len(lines) == 3
    assert lines[1]["metrics"]["reused_tokens"] > 0  # the second turn reused the first
    assert lines[2]["metrics"]["reused_tokens"] <= lines[1]["metrics"]["reused_tokens"]


def test_chat_plain_text_from_a_pipe():
    proc = run("chat", "-n", "6", "--temperature", "0", "--ctx", "512", stdin="Hi\n")
    assert proc.stdout.strip()


def test_info_json(default_model_path):
    data = json.loads(run("info", str(default_model_path), "--json", "--ctx", "1024").stdout)
    assert data["model"]["architecture"] == "gemma3"
    assert data["model"]["sliding_window"] == 512 and data["model"]["context_length"] == 32768
    assert data["settings"]["n_ctx"] == 1024
    assert data["cpu"]["performance_cores"] >= 1 and isinstance(data["cpu"]["features"], list)


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "x", "--model", "/no/such/model.gguf"], "not found"),
        (["generate", "x", "--ctx", "100000"], "--ctx 32768"),
        (["generate", "x", "--temperature", "-2"], "temperature"),
        (["info", "/etc/hostname"], "not a GGUF"),
    ],
)
def test_errors_are_one_clear_line(args, message):
    proc = run(*args, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr and proc.stderr.startswith("edge-runtime: error:")


def test_ctrl_c_stops_the_reply_not_the_program():
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "chat", "--json", "-n", "1500", "--ctx", "2048", "--temperature", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        proc.stdin.write("Write a very long story about the sea.\n")
        proc.stdin.flush()
        time.sleep(5)  # model loaded and the reply well under way (1500 tokens take far longer)
        proc.send_signal(signal.SIGINT)
        proc.stdin.write("Hello\n")
        proc.stdin.close()
        out = proc.stdout.read()
        err = proc.stderr.read()
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    turns = [json.loads(line) for line in out.splitlines()]
    assert len(turns) == 2
    assert turns[0]["finish_reason"] == "cancelled"
    assert turns[0]["metrics"]["generated_tokens"] < 1500
    assert turns[1]["metrics"]["generated_tokens"] > 0
