"""Generation threads follow the load of other processes (llama.cpp's spinning threads collapse otherwise)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from edge_runtime import load_model
from edge_runtime.cpu_load import ThreadGovernor


@pytest.fixture
def busy_core():
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)
    yield
    proc.kill()
    proc.wait()


def settle(governor: ThreadGovernor) -> int:
    time.sleep(governor.interval_s * 2)
    return governor.threads()


def test_a_busy_core_takes_a_thread_and_gives_it_back():
    governor = ThreadGovernor(2, cpus=2, interval_s=0.3)
    # Start from a quiet machine: a process an earlier test ended may still be winding down.
    end = time.monotonic() + 30
    while settle(governor) != 2 and time.monotonic() < end:
        pass
    assert governor.threads() == 2 and governor.sample.others < 0.5
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        governor.threads()  # the interval that ends now began before the competitor
        assert settle(governor) == 1 and governor.sample.others > 0.6
    finally:
        proc.kill()
        proc.wait()
    governor.threads()
    assert settle(governor) == 2


def test_generation_adapts_while_it_runs(default_model_path, busy_core):
    with load_model(default_model_path, n_ctx=256, n_threads=2, adaptive_threads=True, flash_attn=False) as model:
        assert model.settings.adaptive_threads and model.generator.governor.cpus >= 1
        model.generator.governor.cpus = 2  # as on a 2-core board, whatever this machine has
        model.generate("Once upon a time", temperature=0, max_tokens=64)
        assert model.generator._threads == 1
    with load_model(default_model_path, n_ctx=256, n_threads=2, flash_attn=False) as model:
        assert not model.settings.adaptive_threads and model.generator.governor is None  # threads given: kept


def test_info_reports_the_choice(default_model_path):
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "info", "--json"], capture_output=True, text=True,
                          timeout=120)
    import json

    assert json.loads(proc.stdout)["settings"]["adaptive_threads"] is True
