"""Gemma 3n's ears: its ONNX audio encoder in onnxruntime, feeding llama.cpp through input embeddings.

llama.cpp's mtmd skips Gemma 3n's audio tower; the text decoder takes embedding
batches, though (and uses per-layer-embedding row 0 for them, as transformers does
for audio positions). So a clip becomes, as transformers' Gemma3nProcessor lays it out:
"\\n\\n<start_of_audio>" (tokens), 188 rows (the encoder's, then its padding row
up to 188) and the `<end_of_audio>` row (the embedder's hard embedding, which is
what transformers feeds for that token), then "\\n\\n" (tokens). Audio longer than
30 s is split into 30 s clips, each wrapped alike.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from edge_runtime.audio.gemma3n_features import Gemma3nFeatureExtractor
from edge_runtime.backend.core import LlamaModel
from edge_runtime.errors import AudioError, InvalidArgumentError, InvalidModelError, UnsupportedModelError
from edge_runtime.media import Audio, audio_array
from edge_runtime.media import digest as media_digest
from edge_runtime.prompt_plan import MediaCache, MediaSpan

KIND = "gemma3n-audio-encoder"
SAMPLE_RATE = 16000
_MIN_SAMPLES = 513  # one mel frame


class Gemma3nAudioEncoder:
    """An ONNX audio encoder (from `edge-runtime convert-mmproj CKPT -o audio.onnx`) bound to a loaded
    Gemma 3n text model. A media encoder for `media.MediaEncoders` (audio only)."""

    supports_vision = False
    supports_audio = True
    audio_sample_rate = SAMPLE_RATE

    def __init__(self, path: str | os.PathLike[str], model: LlamaModel, *, n_threads: int = 2) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise InvalidArgumentError(f"audio encoder not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(n_threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable or incomplete models
            raise InvalidModelError(f"{self.path} is not a readable ONNX model ({str(exc).splitlines()[0][:200]}); an "
                                    f"f32/f16 encoder needs its data file ({self.path.name}.<tag>.data) beside it. "
                                    "Write it again with `edge-runtime convert-mmproj CKPT -o audio.onnx`") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("edge_runtime.kind") != KIND:
            raise InvalidModelError(f"{self.path} is not a Gemma 3n audio encoder written by edge-runtime "
                                    "(`edge-runtime convert-mmproj CKPT -o audio.onnx`)")
        arch = model.meta("general.architecture")
        if arch != "gemma3n":
            raise UnsupportedModelError(f"{self.path} is Gemma 3n's audio encoder but the model is {arch}: "
                                        "use it with a Gemma 3n E2B/E4B GGUF")
        width = int(meta.get("text_hidden_size", 0))
        if width != model.n_embd_inp:
            raise InvalidModelError(f"{self.path} gives {width}-wide embeddings but the model's input is "
                                    f"{model.n_embd_inp} wide: the encoder belongs to another Gemma 3n size; convert "
                                    "it from the same checkpoint as the model")
        start = model.token_id("<start_of_audio>")
        if start is None:
            raise InvalidModelError(f"{model.path} has no <start_of_audio> token: not a Gemma 3n vocabulary")
        self.model = model
        self.start_ids = [start]
        self.between_ids = model.tokenize("\n\n\n\n", add_special=False, parse_special=True)
        self.soft_tokens = int(meta.get("soft_tokens", 188))
        self.features = Gemma3nFeatureExtractor()
        stat = self.path.stat()
        self.identity = f"{self.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        self._cache = MediaCache()
        self._last_samples: tuple[str | None, np.ndarray] = (None, np.zeros(0, np.float32))

    def close(self) -> None:
        self.session = None
        self._cache.clear()
        self._last_samples = (None, np.zeros(0, np.float32))

    # decoding files and bytes (for media.audio_array)
    def decode(self, data: bytes, what: str) -> np.ndarray:
        """Mono float32 samples at 16 kHz from an encoded file held in memory (WAV, FLAC, OGG, MP3)."""
        import soundfile as sf

        from edge_runtime.audio.audio import from_array

        try:
            frames, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except Exception:  # libsndfile's errors name nothing useful
            raise InvalidArgumentError(f"{what} is not an audio file this runtime can read (WAV, FLAC, OGG, MP3)") from None
        if frames.size == 0:
            raise AudioError(f"{what} contains no audio samples")
        return from_array(frames, int(rate))[0]

    # the encoder's part in prompt plans
    def media_runs(self, part: Audio) -> list:
        """Per 30 s clip: the <start_of_audio> token and a span of 188 + 1 rows (clips joined by "\\n\\n\\n\\n")."""
        if not isinstance(part, Audio):
            raise UnsupportedModelError(f"{self.path} encodes audio only: this model cannot see images here")
        key = hashlib.sha256(f"{media_digest(part)}|{self.identity}".encode()).hexdigest()
        return self._cache.runs(key, lambda: self._layout(part, key))

    def _layout(self, part: Audio, key: str) -> list:
        samples = self._samples(part)
        runs: list = []
        for i, start in enumerate(range(0, samples.size, self.features.settings.max_samples)):
            if i:
                runs.append(list(self.between_ids))
            digest = hashlib.sha256(f"{key}|{i}".encode()).hexdigest()
            runs += [list(self.start_ids), MediaSpan(digest, self.soft_tokens + 1, "audio", self, payload=(part, start))]
        return runs

    def _samples(self, part: Audio) -> np.ndarray:
        """The part's checked 16 kHz samples; the last part's are kept, so its 30 s clips decode it once."""
        key = media_digest(part)
        if self._last_samples[0] == key:
            return self._last_samples[1]
        samples = self._checked_samples(part)
        self._last_samples = (key, samples)
        return samples

    def _checked_samples(self, part: Audio) -> np.ndarray:
        samples = audio_array(part, self)
        if samples.size < _MIN_SAMPLES:
            raise AudioError(f"audio too short: {samples.size} samples; Gemma 3n needs at least {_MIN_SAMPLES} "
                             "(32 ms at 16 kHz)")
        if not np.isfinite(samples).all():
            raise AudioError("audio contains NaN or infinite samples")
        step = self.features.settings.max_samples
        tail = samples.size % step
        if samples.size > step and 0 < tail < _MIN_SAMPLES:  # a sliver after the last 30 s boundary: pad it
            samples = np.concatenate([samples, np.zeros(_MIN_SAMPLES - tail, np.float32)])
        return samples

    def embeddings(self, span: MediaSpan) -> np.ndarray:
        """The span's rows: the encoder's frames, padding rows up to 188, the <end_of_audio> row."""
        part, start = span.payload
        step = self.features.settings.max_samples
        return self._cache.rows(span.digest, lambda: self.encode(self._samples(part)[start : start + step]))

    def encode(self, clip: np.ndarray) -> np.ndarray:
        """One clip (at most 30 s of 16 kHz mono) -> [188 + 1, text width] float32 rows."""
        if self.session is None:
            raise InvalidArgumentError("the audio encoder has been closed")
        feats = self.features.clip(clip)
        audio, special = self.session.run(None, {"input_features": feats.mel[None],
                                                 "input_features_mask": feats.mask[None]})
        audio = audio[0][: self.soft_tokens]
        padding = np.repeat(special[1:2], self.soft_tokens - len(audio), axis=0)
        return np.concatenate([audio, padding, special[0:1]], axis=0).astype(np.float32)
