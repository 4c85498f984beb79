"""Shared fixtures: the real default model (Gemma 3 270M Q4_K_M) and real llama.cpp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    from edge_runtime.default_model import default_model_path as locate

    return locate()


@pytest.fixture(scope="module")
def model(default_model_path):
    """The default model with a 2048-token window, greedy-friendly settings."""
    from edge_runtime import load_model

    with load_model(default_model_path, n_ctx=2048, flash_attn=False) as m:
        yield m
