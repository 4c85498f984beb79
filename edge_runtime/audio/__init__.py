"""Audio front-end and on-device speech recognition.

Data flows one way: `audio` (decode, 16 kHz mono) -> `vad` (speech probability
per 32 ms) -> `segmenter` (speech segments) -> an engine from `engines`
(text) -> `transcribe` (timed result). `microphone` feeds the same chain live.

Nothing here imports an optional dependency (soundfile, sounddevice,
onnxruntime, faster_whisper) at import time.
"""

from __future__ import annotations

SAMPLE_RATE = 16000  # every engine and the VAD take 16 kHz mono float32
