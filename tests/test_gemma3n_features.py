"""Gemma 3n's log-mel features against transformers' Gemma3nAudioFeatureExtractor, on real speech."""

from __future__ import annotations

import numpy as np
import pytest

from audio_speech import SR, speak
from edge_runtime.audio.gemma3n_features import Gemma3nFeatureExtractor
from edge_runtime.errors import InvalidArgumentError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return speak("The quick brown fox jumps over the lazy dog near the river bank.", tmp_path_factory.mktemp("g3n"))


@pytest.mark.parametrize("seconds", [0.05, 1.0, 3.7131, 29.99])
def test_features_equal_transformers(speech, seconds):
    n = int(seconds * SR)
    audio = np.resize(speech, n).astype(np.float32) if n > speech.size else speech[:n]
    ref = transformers.Gemma3nAudioFeatureExtractor()(audio, return_tensors="np")
    ours = Gemma3nFeatureExtractor().clip(audio)
    assert ours.mel.shape == ref["input_features"][0].shape and ours.mel.dtype == np.float32
    np.testing.assert_allclose(ours.mel, ref["input_features"][0], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(ours.mask, ref["input_features_mask"][0])


def test_long_audio_is_split_into_30_s_clips(speech):
    audio = np.resize(speech, 65 * SR).astype(np.float32)
    clips = Gemma3nFeatureExtractor()(audio)
    # frames = floor((samples - 513) / 160) + 1: 2997 for 30 s, 497 for the last 5 s
    assert len(clips) == 3 and clips[0].mel.shape == (2997, 128) and clips[2].mel.shape == (497, 128)
    # each clip is exactly what transformers computes for that 30 s piece
    ref = transformers.Gemma3nAudioFeatureExtractor()(audio[30 * SR: 60 * SR], return_tensors="np")
    np.testing.assert_allclose(clips[1].mel, ref["input_features"][0], rtol=0, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="at most 30 s"):
        Gemma3nFeatureExtractor().clip(audio)
