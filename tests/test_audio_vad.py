"""Silero VAD (real onnxruntime) and the streaming segmenter."""

from __future__ import annotations

import numpy as np
import pytest

from audio_speech import SR, build_recording
from edge_runtime.audio.segmenter import Segmenter, SegmenterSettings, segment_audio
from edge_runtime.audio.vad import CHUNK, SileroVAD, VadSettings
from edge_runtime.errors import InvalidArgumentError, ModelNotFoundError

pytest.importorskip("onnxruntime")

# Segments carry 200 ms of padding; the VAD decides per 32 ms chunk and needs a
# few chunks to rise or fall. Tolerances on the true speech edges:
START_TOLERANCE = 0.35  # seconds
END_TOLERANCE = 0.45


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    return build_recording(tmp_path_factory.mktemp("vad"))


@pytest.fixture(scope="module")
def vad():
    with SileroVAD() as v:
        yield v


def test_segments_match_the_inserted_silences(recording, vad):
    vad.reset()
    probs = vad.probabilities(recording.audio)
    segments = segment_audio(recording.audio, probs)
    assert len(segments) == len(recording.speech)
    for seg, (start, end) in zip(segments, recording.speech):
        assert abs(seg.start - start) <= START_TOLERANCE, (seg, start)
        assert abs(seg.end - end) <= END_TOLERANCE, (seg, end)
        assert seg.start <= start and seg.end >= end - 0.1  # padding covers the speech
        assert seg.audio.size == pytest.approx(seg.duration * SR, abs=1)


def test_streaming_calls_equal_batch(recording, vad):
    """512 samples per call with the 64-sample context and state carried == the batch path."""
    vad.reset()
    batch = vad.probabilities(recording.audio)
    vad.reset()
    n = recording.audio.size // CHUNK
    streamed = np.array([vad(recording.audio[i * CHUNK:(i + 1) * CHUNK]) for i in range(n)])
    assert np.allclose(streamed, batch[:n], atol=1e-5)
    lead = int(recording.speech[0][0] * SR) // CHUNK - 3  # chunks of the leading silence
    assert batch[:lead].max() < 0.2 and batch.max() > 0.9


def test_speech_scores_high_chunk_by_chunk(recording, vad):
    """Chunk-by-chunk calls (the live path) see speech as speech."""
    start = int(recording.speech[0][0] * SR)
    speech = recording.audio[start:start + 40 * CHUNK]
    vad.reset()
    with_context = np.mean([vad(speech[i * CHUNK:(i + 1) * CHUNK]) for i in range(40)])
    assert with_context > 0.7


def test_silence_and_noise_have_no_speech(vad):
    rng = np.random.default_rng(3)
    for audio in (np.zeros(5 * SR, np.float32), (rng.standard_normal(5 * SR) * 0.05).astype(np.float32)):
        vad.reset()
        assert segment_audio(audio, vad.probabilities(audio)) == []


def test_bad_chunk_and_missing_model(vad, tmp_path):
    with pytest.raises(InvalidArgumentError):
        vad(np.zeros(480, np.float32))
    with pytest.raises(ModelNotFoundError):
        SileroVAD(VadSettings(path=str(tmp_path / "missing.onnx")))


def feed(seg: Segmenter, probs) -> list[tuple[int, list]]:
    """Push synthetic probabilities; return (chunk index, segments emitted) pairs."""
    out = []
    for i, p in enumerate(probs):
        chunk = np.full(CHUNK, i, dtype=np.float32)  # each chunk carries its index
        emitted = seg.push(chunk, p)
        if emitted:
            out.append((i, emitted))
    tail = seg.flush()
    if tail:
        out.append((len(probs), tail))
    return out


def test_segment_emitted_as_soon_as_silence_is_long_enough():
    s = SegmenterSettings(min_silence_ms=320, pad_ms=64, min_speech_ms=96)  # 10, 2, 3 chunks
    probs = [0.0] * 20 + [0.9] * 30 + [0.0] * 40
    events = feed(Segmenter(s), probs)
    assert len(events) == 1
    index, [seg] = events[0]
    assert index == 50 + 10 - 1  # the 10th silent chunk closes it
    first, last = int(seg.audio[0]), int(seg.audio[-1])
    assert (first, last) == (18, 51)  # two chunks of pre-roll, two of trailing pad
    assert seg.start == pytest.approx(18 * CHUNK / SR) and seg.end == pytest.approx(52 * CHUNK / SR)


def test_hysteresis_keeps_a_dipping_segment_open():
    s = SegmenterSettings(threshold=0.5, hysteresis=0.15, min_silence_ms=160, pad_ms=0)
    probs = [0.0] * 5 + [0.9] * 10 + [0.4] * 20 + [0.9] * 10 + [0.0] * 10  # 0.4 >= 0.35: still speech
    events = feed(Segmenter(s), probs)
    assert len(events) == 1 and len(events[0][1]) == 1
    probs = [0.0] * 5 + [0.9] * 10 + [0.3] * 20 + [0.9] * 10 + [0.0] * 10  # 0.3 < 0.35: a pause
    assert sum(len(e) for _, e in feed(Segmenter(s), probs)) == 2
    # a brief rise to 0.45 never opens a segment
    assert feed(Segmenter(s), [0.45] * 50) == []


def test_min_speech_drops_clicks():
    s = SegmenterSettings(min_speech_ms=250, min_silence_ms=320, pad_ms=0)
    assert feed(Segmenter(s), [0.0] * 5 + [0.9] * 3 + [0.0] * 20) == []
    assert len(feed(Segmenter(s), [0.0] * 5 + [0.9] * 9 + [0.0] * 20)) == 1


def test_max_length_splits_at_the_best_pause():
    s = SegmenterSettings(max_segment_s=3.2, min_silence_ms=500, pad_ms=0)  # 100 chunks max
    # 80 chunks of speech, a 6-chunk pause (shorter than min_silence), more speech, then silence
    probs = [0.9] * 80 + [0.1] * 6 + [0.9] * 60 + [0.0] * 30
    segments = [s_ for _, ss in feed(Segmenter(s), probs) for s_ in ss]
    assert len(segments) == 2
    first, second = segments
    cut = int(first.audio[-1])
    assert 80 <= cut <= 85  # inside the pause
    assert int(second.audio[0]) == cut + 1  # nothing lost or repeated
    assert all(seg.duration <= 3.2 + 1e-9 for seg in segments)


def test_max_length_without_pause_still_splits():
    s = SegmenterSettings(max_segment_s=3.2, min_silence_ms=500, pad_ms=0)
    probs = [0.9] * 250 + [0.0] * 30
    segments = [x for _, ss in feed(Segmenter(s), probs) for x in ss]
    assert len(segments) >= 3
    assert all(seg.duration <= 3.2 + 1e-9 for seg in segments)
    joined = np.concatenate([seg.audio for seg in segments])
    assert np.array_equal(np.unique(joined), np.arange(int(joined[0]), int(joined[-1]) + 1))


def test_split_leaving_only_silence_emits_nothing_more():
    s = SegmenterSettings(max_segment_s=3.2, min_silence_ms=640, pad_ms=64)  # 100 chunks max, 20 to close
    # speech, then a pause long enough to be the cut but shorter than min_silence... then silence
    probs = [0.9] * 90 + [0.1] * 19 + [0.0] * 40
    segments = [x for _, ss in feed(Segmenter(s), probs) for x in ss]
    assert len(segments) == 1
    assert int(segments[0].audio[0]) == 0 and int(segments[0].audio[-1]) >= 89


@pytest.mark.parametrize("kwargs", [dict(threshold=1.5), dict(hysteresis=0.6), dict(pad_ms=900),
                                    dict(min_speech_ms=-1), dict(max_segment_s=0.1)])
def test_bad_settings(kwargs):
    with pytest.raises(InvalidArgumentError):
        Segmenter(SegmenterSettings(**kwargs))
