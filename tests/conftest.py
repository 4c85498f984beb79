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


@pytest.fixture
def sampled_logits(monkeypatch):
    """The top logits every sampling step saw, by sampler in creation order (requests start in arrival order)."""
    import numpy as np

    from edge_runtime.backend import core

    seen: dict[int, list[np.ndarray]] = {}
    made = iter(range(10**6))
    init, sample = core.Sampler.__init__, core.Sampler.sample

    def tagged_init(self, model, params):
        init(self, model, params)
        self.tag = next(made)

    def recording_sample(self, ctx, index=-1):
        seen.setdefault(self.tag, []).append(np.sort(ctx.logits(index))[-8:])
        return sample(self, ctx, index)

    monkeypatch.setattr(core.Sampler, "__init__", tagged_init)
    monkeypatch.setattr(core.Sampler, "sample", recording_sample)
    return seen
