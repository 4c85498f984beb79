"""llama.cpp's multimodal library (mtmd) through llama-cpp-python: the one place that calls it.

A `MultimodalProjector` pairs a projector GGUF (mmproj) with an already loaded
text model. It encodes audio (and images) into embeddings in the text model's
space and evaluates prompts that mix text and audio into a `LlamaContext`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llama_cpp import mtmd_cpp as mt

from edge_runtime.backend.core import LlamaModel, _log_callback, ensure_backend, recent_llama_errors
from edge_runtime.errors import (
    AudioError,
    GenerationError,
    InvalidArgumentError,
    InvalidModelError,
    UnsupportedModelError,
)
from edge_runtime.gguf_file import read_header
from edge_runtime.media import Image, audio_array, image_array
from edge_runtime.media import digest as media_digest
from edge_runtime.prompt_plan import MediaCache, MediaSpan

_logs_routed = False

# mtmd cuts audio into 30 s pieces itself; a piece needs at least one 10 ms hop of samples
# (a 1-sample input aborts the process, a 1-sample tail after a 30 s boundary fails).
_PIECE_SECONDS = 30
_MIN_SAMPLES = 160


def _route_logs() -> None:
    """Send mtmd's and its helpers' logs through the backend's logger (and error buffer)."""
    global _logs_routed
    if not _logs_routed:
        mt.mtmd_log_set(_log_callback, ctypes.c_void_p(0))
        mt.mtmd_helper_log_set(_log_callback, ctypes.c_void_p(0))
        _logs_routed = True


def default_marker() -> str:
    """The text mtmd replaces with the media passed alongside a prompt."""
    return mt.mtmd_default_marker().decode("utf-8")


@dataclass(frozen=True)
class ProjectorInfo:
    """What a projector GGUF declares (read from its header, no weights loaded)."""

    path: Path
    has_audio: bool
    has_vision: bool
    audio_projector: str | None
    vision_projector: str | None
    projection_dim: int | None


def inspect_projector(path: str | os.PathLike[str]) -> ProjectorInfo:
    """Read a projector's header; ModelNotFoundError / InvalidModelError when unusable."""
    header = read_header(path)
    meta = header.metadata
    if header.architecture != "clip":
        raise InvalidModelError(
            f"{header.path} is a {header.architecture!r} model, not a multimodal projector (mmproj) GGUF"
        )
    proj = meta.get("clip.projector_type")
    audio_proj = meta.get("clip.audio.projector_type", proj if meta.get("clip.has_audio_encoder") else None)
    vision_proj = meta.get("clip.vision.projector_type", proj if meta.get("clip.has_vision_encoder") else None)
    dim = meta.get("clip.audio.projection_dim", meta.get("clip.vision.projection_dim"))
    return ProjectorInfo(
        path=header.path,
        has_audio=bool(meta.get("clip.has_audio_encoder", False)),
        has_vision=bool(meta.get("clip.has_vision_encoder", False)),
        audio_projector=str(audio_proj) if audio_proj else None,
        vision_projector=str(vision_proj) if vision_proj else None,
        projection_dim=int(dim) if dim is not None else None,
    )


_FAMILIES = {"gemma3": ("gemma3",), "gemma3n": ("gemma3nv", "gemma3na"),
             "gemma4": ("gemma4v", "gemma4a", "gemma4uv", "gemma4ua")}


def check_belongs(info: ProjectorInfo, model: LlamaModel) -> None:
    """Refuse a projector made for another model: another Gemma generation, or another embedding width."""
    arch = model.meta("general.architecture") or "?"
    for kind in (info.vision_projector, info.audio_projector):
        owner = next((a for a, kinds in _FAMILIES.items() if kind in kinds), None)
        if owner is not None and owner != arch:
            raise InvalidModelError(f"{info.path} is a {owner} projector ({kind}) but the model is {arch}: "
                                    "pass the mmproj converted from the same checkpoint as the model")
    if info.vision_projector == "gemma3nv":
        flat = [t.name for t in read_header(info.path).tensors if t.name.endswith("layer_scale.gamma") and len(t.shape) == 1]
        if flat:  # mtmd's MobileNetV5 graph would abort the process on these
            raise InvalidModelError(f"{info.path} stores MobileNetV5's layer scales as 1-D tensors ({flat[0]}, ...), "
                                    "which llama.cpp's vision graph cannot use (it aborts); write the projector again "
                                    "with `edge-runtime convert-mmproj CKPT -o mmproj.gguf`")
    if info.projection_dim is not None and info.projection_dim != model.n_embd_inp:
        raise InvalidModelError(f"{info.path} projects to {info.projection_dim}-wide embeddings but the model's "
                                f"input is {model.n_embd_inp} wide: the projector belongs to another model size; "
                                "pass the mmproj converted from the same checkpoint as the model")


class _Chunks:
    """An owned mtmd_input_chunks list (freed on exit)."""

    def __init__(self) -> None:
        self.ptr = mt.mtmd_input_chunks_init()
        if not self.ptr:
            raise GenerationError("mtmd could not allocate an input chunk list")

    def __len__(self) -> int:
        return int(mt.mtmd_input_chunks_size(self.ptr))

    def get(self, i: int):
        return mt.mtmd_input_chunks_get(self.ptr, i)

    def __enter__(self) -> "_Chunks":
        return self

    def __exit__(self, *exc: object) -> None:
        mt.mtmd_input_chunks_free(self.ptr)


class MultimodalProjector:
    """An mtmd context: a projector GGUF bound to a loaded text model."""

    def __init__(self, mmproj_path: str | os.PathLike[str], model: LlamaModel, *, n_threads: int = 2,
                 require_audio: bool = True) -> None:
        ensure_backend()
        _route_logs()
        info = inspect_projector(mmproj_path)
        if require_audio and not info.has_audio and "gemma3n" not in (info.vision_projector or ""):
            raise UnsupportedModelError(
                f"{info.path} has no audio encoder (projector: {info.vision_projector or 'unknown'}); "
                "audio needs a Gemma 4 E2B/E4B audio projector, e.g. from `edge-runtime convert-mmproj`"
            )
        if require_audio and "gemma3n" in (info.audio_projector or "") + (info.vision_projector or ""):
            raise UnsupportedModelError(
                f"{info.path} is a Gemma 3n projector: this llama.cpp runs only Gemma 3n's vision tower, "
                "not its audio encoder; use Gemma 4 E2B/E4B for audio"
            )
        check_belongs(info, model)
        self.path = info.path
        self.info = info
        self.model = model
        params = mt.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.n_threads = int(n_threads)
        params.warmup = False
        recent_llama_errors()
        ptr = mt.mtmd_init_from_file(os.fsencode(self.path), model.ptr, params)
        if not ptr:
            reasons = "; ".join(recent_llama_errors()) or "no reason given"
            raise InvalidModelError(f"mtmd could not load the projector {self.path} with model {model.path}: {reasons}")
        self._ptr = ptr
        self.supports_audio = bool(mt.mtmd_support_audio(ptr))
        self.supports_vision = bool(mt.mtmd_support_vision(ptr))
        self.audio_sample_rate = int(mt.mtmd_get_audio_sample_rate(ptr)) if self.supports_audio else None
        self.n_embd = model.n_embd_inp
        stat = self.path.stat()
        self.identity = f"{self.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        self._cache = MediaCache()
        if require_audio and not self.supports_audio:
            self.close()
            raise UnsupportedModelError(f"llama.cpp loaded {self.path} without audio support (projector {info.audio_projector})")

    # lifecycle
    @property
    def ptr(self):
        if self._ptr is None:
            raise InvalidArgumentError("the multimodal projector has been closed")
        return self._ptr

    def close(self) -> None:
        if getattr(self, "_ptr", None) is not None:
            mt.mtmd_free(self._ptr)
            self._ptr = None

    def __enter__(self) -> "MultimodalProjector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # audio
    def _check_samples(self, samples: np.ndarray, sample_rate: int | None) -> np.ndarray:
        if not self.supports_audio:
            raise UnsupportedModelError(f"{self.path} has no audio encoder")
        if sample_rate is not None and sample_rate != self.audio_sample_rate:
            raise AudioError(
                f"audio at {sample_rate} Hz given, but the projector needs {self.audio_sample_rate} Hz; resample first"
            )
        arr = np.asarray(samples)
        if arr.ndim != 1:
            raise AudioError(f"audio must be mono 1-D samples, got an array of shape {arr.shape}")
        if arr.size < _MIN_SAMPLES:
            raise AudioError(f"audio too short: {arr.size} samples; at least {_MIN_SAMPLES} (10 ms at 16 kHz) are needed")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise AudioError("audio contains NaN or infinite samples")
        piece = _PIECE_SECONDS * int(self.audio_sample_rate or 16000)
        tail = arr.size % piece
        if arr.size > piece and 0 < tail < _MIN_SAMPLES:  # pad a sliver after the last 30 s boundary with silence
            arr = np.concatenate([arr, np.zeros(_MIN_SAMPLES - tail, dtype=np.float32)])
        return arr

    def _tokenize(self, chunks: _Chunks, text: str, bitmap, *, add_special: bool) -> None:
        """Tokenize `text` around one media bitmap (freed here, whatever happens)."""
        marker = default_marker()
        try:
            if text.count(marker) != 1:
                raise InvalidArgumentError(f"the prompt must contain the media marker {marker!r} exactly once")
            encoded = text.encode("utf-8")
            inp = mt.mtmd_input_text(encoded, len(encoded), add_special, True)
            bitmaps = (mt.mtmd_bitmap_p_ctypes * 1)(bitmap)
            recent_llama_errors()
            status = mt.mtmd_tokenize(self.ptr, chunks.ptr, ctypes.byref(inp), bitmaps, 1)
        finally:
            mt.mtmd_bitmap_free(bitmap)
        if status != 0:
            reasons = "; ".join(recent_llama_errors()) or f"status {status}"
            raise GenerationError(f"mtmd could not tokenize the media prompt: {reasons}")

    @staticmethod
    def _audio_bitmap(samples: np.ndarray):
        bitmap = mt.mtmd_bitmap_init_from_audio(samples.size, samples.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        if not bitmap:
            raise AudioError("mtmd could not take the audio samples")
        return bitmap

    def _encode(self, chunks: _Chunks, chunk_type: int, what: str) -> np.ndarray:
        """Run the encoder on every chunk of `chunk_type`: [n_tokens, n_embd] float32."""
        parts = []
        for i in range(len(chunks)):
            chunk = chunks.get(i)
            if mt.mtmd_input_chunk_get_type(chunk) != chunk_type:
                continue
            n_tokens = int(mt.mtmd_input_chunk_get_n_tokens(chunk))
            recent_llama_errors()
            if mt.mtmd_encode_chunk(self.ptr, chunk) != 0:
                reasons = "; ".join(recent_llama_errors()) or "no reason given"
                raise GenerationError(f"mtmd failed to encode {what}: {reasons}")
            out = mt.mtmd_get_output_embd(self.ptr)
            parts.append(np.ctypeslib.as_array(out, shape=(n_tokens, self.n_embd)).copy())
        if not parts:
            raise GenerationError(f"mtmd produced no {what} chunk")
        return np.concatenate(parts, axis=0)

    def encode_audio(self, samples: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """The projector's embeddings for mono float samples: [n_tokens, n_embd] float32.

        Audio longer than 30 s is encoded in 30 s pieces (mtmd's own split) and concatenated.
        """
        arr = self._check_samples(samples, sample_rate)
        with _Chunks() as chunks:
            self._tokenize(chunks, default_marker(), self._audio_bitmap(arr), add_special=False)
            return self._encode(chunks, mt.MTMD_INPUT_CHUNK_TYPE_AUDIO, "audio")

    def encode_image(self, rgb: np.ndarray) -> np.ndarray:
        """The projector's embeddings for an RGB image ([height, width, 3] uint8): [n_tokens, n_embd].

        mtmd resizes and normalizes the image the way the model's preprocessor does.
        """
        with _Chunks() as chunks:
            self._tokenize(chunks, default_marker(), self._image_bitmap(rgb), add_special=False)
            return self._encode(chunks, mt.MTMD_INPUT_CHUNK_TYPE_IMAGE, "the image")

    def _image_bitmap(self, rgb: np.ndarray):
        if not self.supports_vision:
            raise UnsupportedModelError(f"{self.path} has no vision encoder: this model cannot take images")
        arr = np.asarray(rgb)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or min(arr.shape[:2]) < 1:
            raise InvalidArgumentError(f"an image must be a [height, width, 3] uint8 RGB array, got {arr.dtype} {arr.shape}")
        arr = np.ascontiguousarray(arr)
        bitmap = mt.mtmd_bitmap_init(arr.shape[1], arr.shape[0], arr.ctypes.data_as(ctypes.POINTER(ctypes.c_ubyte)))
        if not bitmap:
            raise InvalidArgumentError("mtmd could not take the image")
        return bitmap

    # prompts mixing text and media
    def decode(self, data: bytes, what: str) -> np.ndarray:
        """Decode an encoded image (PNG, JPEG, BMP, ...) or audio file (WAV, MP3, FLAC) held in memory:
        an RGB uint8 array [h, w, 3], or mono float32 samples at the projector's rate."""
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        recent_llama_errors()
        bitmap = mt.mtmd_helper_bitmap_init_from_buf(self.ptr, buf, len(data), False) if data else None
        if not bitmap:
            raise InvalidArgumentError(f"{what} is not an image or audio file this runtime can read "
                                       "(PNG, JPEG, BMP, GIF, WAV, MP3, FLAC)")
        try:
            n = int(mt.mtmd_bitmap_get_n_bytes(bitmap))
            raw = ctypes.string_at(mt.mtmd_bitmap_get_data(bitmap), n)
            if mt.mtmd_bitmap_is_audio(bitmap):
                return np.frombuffer(raw, dtype=np.float32).copy()
            h, w = int(mt.mtmd_bitmap_get_ny(bitmap)), int(mt.mtmd_bitmap_get_nx(bitmap))
            return np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3).copy()
        finally:
            mt.mtmd_bitmap_free(bitmap)

    # media in prompts (see prompt_plan)
    def media_runs(self, part) -> list:
        """Boundary tokens and the media span mtmd lays out for one Image/Audio part (cached by content)."""
        key = hashlib.sha256(f"{media_digest(part)}|{self.identity}".encode()).hexdigest()
        return self._cache.runs(key, lambda: self._layout(part, key))

    def _layout(self, part, key: str) -> list:
        kind = "image" if isinstance(part, Image) else "audio"
        load = (lambda: image_array(part, self)) if kind == "image" else (lambda: audio_array(part, self))
        runs: list = []
        with _Chunks() as chunks:
            self._tokenize(chunks, default_marker(), self._media_bitmap(kind, load()), add_special=False)
            for i in range(len(chunks)):
                chunk = chunks.get(i)
                if mt.mtmd_input_chunk_get_type(chunk) == mt.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    runs.append(self._text_tokens(chunk))
                    continue
                n_pos = int(mt.mtmd_input_chunk_get_n_pos(chunk))
                if n_pos != int(mt.mtmd_input_chunk_get_n_tokens(chunk)):
                    raise UnsupportedModelError(f"{self.path}: projectors with M-RoPE positions are not supported")
                runs.append(MediaSpan(key, n_pos, kind, self, payload=load,
                                      non_causal=bool(mt.mtmd_decode_use_non_causal(self.ptr, chunk))))
        return runs

    def embeddings(self, span: MediaSpan) -> np.ndarray:
        """The encoder's rows for a span from `media_runs` ([n_pos, n_embd]), kept for reuse by content."""
        return self._cache.rows(span.digest, lambda: self._encode_span(span))

    def _encode_span(self, span: MediaSpan) -> np.ndarray:
        with _Chunks() as chunks:
            self._tokenize(chunks, default_marker(), self._media_bitmap(span.kind, span.payload()), add_special=False)
            chunk_type = mt.MTMD_INPUT_CHUNK_TYPE_IMAGE if span.kind == "image" else mt.MTMD_INPUT_CHUNK_TYPE_AUDIO
            return self._encode(chunks, chunk_type, f"the {span.kind}")

    def _media_bitmap(self, kind: str, arr: np.ndarray):
        return self._image_bitmap(arr) if kind == "image" else self._audio_bitmap(self._check_samples(arr, None))

    @staticmethod
    def _text_tokens(chunk) -> list[int]:
        n = ctypes.c_size_t(0)
        ptr = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
        return [int(ptr[k]) for k in range(n.value)]
