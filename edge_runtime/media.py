"""Images and audio in prompts: the parts of a prompt, and how each model wraps them.

A prompt is a sequence of parts: text (`str`), `Image` (a path, encoded bytes or an
RGB uint8 array) and `Audio` (a path, encoded bytes, or an array with its sample rate).
The model's encoders (`MediaEncoders`: mtmd for mmproj GGUFs, onnxruntime for Gemma 3n's
audio.onnx) turn each item into boundary tokens around a media span; `plan_prompt` puts
the text around them that the model's transformers processor writes (Gemma 3 and 3n:
"\\n\\n" before and after; Gemma 4: nothing) and returns a `PromptPlan`.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np

from edge_runtime.errors import InvalidArgumentError, UnsupportedModelError
from edge_runtime.prompt_plan import PromptPlan

MEDIA_MARKER = "<__media__>"  # where a CLI prompt puts its media, in order


@dataclass(frozen=True, eq=False)
class Image:
    """An image: a file path, encoded bytes (PNG, JPEG, ...) or an RGB uint8 array [h, w, 3]."""

    source: Union[str, os.PathLike, bytes, np.ndarray]


@dataclass(frozen=True, eq=False)
class Audio:
    """A clip: a file path, encoded bytes, or mono samples with their `sample_rate`."""

    source: Union[str, os.PathLike, bytes, np.ndarray]
    sample_rate: int | None = None


Part = Union[str, Image, Audio]


def is_media_prompt(prompt: object) -> bool:
    return isinstance(prompt, (list, tuple)) and any(isinstance(p, (Image, Audio)) for p in prompt)


def _read(source: Union[str, os.PathLike], what: str) -> bytes:
    path = Path(source)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidArgumentError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {what} file {path} ({exc.strerror})") from None


def image_array(part: Image, projector) -> np.ndarray:
    """The part's RGB uint8 pixels [h, w, 3]; files and bytes decoded by the projector (mtmd)."""
    src = part.source
    if isinstance(src, np.ndarray):
        return src
    data = src if isinstance(src, bytes) else _read(src, "image")
    arr = projector.decode(data, f"the image {src if not isinstance(src, bytes) else '(bytes)'}")
    if arr.ndim != 3:
        raise InvalidArgumentError("an Image part holds audio; use Audio(...)")
    return arr


def audio_array(part: Audio, projector) -> np.ndarray:
    """The part's mono float32 samples at the projector's rate; files and bytes decoded by the projector."""
    from edge_runtime.audio.resample import resample

    rate = projector.audio_sample_rate or 16000
    src = part.source
    if isinstance(src, np.ndarray):
        if part.sample_rate is None:
            raise InvalidArgumentError("an Audio array needs its sample_rate, e.g. Audio(samples, sample_rate=16000)")
        return resample(np.asarray(src, dtype=np.float32).reshape(-1), int(part.sample_rate), rate)
    data = src if isinstance(src, bytes) else _read(src, "audio")
    arr = projector.decode(data, f"the audio {src if not isinstance(src, bytes) else '(bytes)'}")
    if arr.ndim != 1:
        raise InvalidArgumentError("an Audio part holds an image; use Image(...)")
    return arr


def media_kind(part: object) -> str:
    if isinstance(part, Image):
        return "image"
    if isinstance(part, Audio):
        return "audio"
    raise InvalidArgumentError(f"a prompt part must be text, Image or Audio, not {type(part).__name__}")


_digests: "weakref.WeakKeyDictionary[object, str]" = weakref.WeakKeyDictionary()


def digest(part: Union[Image, Audio]) -> str:
    """A hash of the part's content (file bytes, encoded bytes, or samples with their rate); computed once per part."""
    found = _digests.get(part)
    if found is None:
        src = part.source
        h = hashlib.sha256(media_kind(part).encode())
        if isinstance(src, np.ndarray):
            arr = np.ascontiguousarray(src)
            h.update(f"{arr.dtype.str}{arr.shape}{getattr(part, 'sample_rate', None)}".encode())
            h.update(arr.tobytes())
        else:
            h.update(src if isinstance(src, bytes) else _read(src, media_kind(part)))
        found = _digests[part] = h.hexdigest()
    return found


def _wrapping(architecture: str) -> tuple[str, str]:
    """Text the model's processor puts around the boundary tokens of a media item."""
    if architecture in ("gemma3", "gemma3n"):  # "\n\n<start_of_image>...<end_of_image>\n\n" (audio alike in 3n)
        return "\n\n", "\n\n"
    return "", ""


class MediaEncoders:
    """The encoders a model has loaded, by modality: each turns a part into runs of boundary tokens
    around a media span (`media_runs(part)`) and a span into input embeddings (`embeddings(span)`)."""

    def __init__(self) -> None:
        self.image = None
        self.audio = None

    def for_part(self, part: Union[Image, Audio]):
        kind = media_kind(part)
        encoder = getattr(self, kind)
        if encoder is None:
            if self.image is None and self.audio is None:
                raise InvalidArgumentError("the prompt holds media but no projector is loaded: pass --mmproj FILE "
                                           "(load_model(..., mmproj=FILE)) with the model's mmproj GGUF")
            other = self.image or self.audio
            verb = "see images" if kind == "image" else "hear audio"
            raise UnsupportedModelError(f"{other.path} has no {kind} encoder: this model cannot {verb}"
                                        + ("" if kind == "image" else "; for Gemma 3n pass its audio encoder "
                                           "(--mmproj audio.onnx from `edge-runtime convert-mmproj CKPT -o audio.onnx`)"))
        return encoder

    def close(self) -> None:
        for encoder in {id(e): e for e in (self.image, self.audio) if e is not None}.values():
            encoder.close()
        self.image = self.audio = None


def plan_prompt(parts: Sequence[Part], encoders: MediaEncoders, architecture: str,
                tokenize: Callable[[str, bool], list[int]]) -> PromptPlan:
    """Parts -> a prompt plan: text tokenized by `tokenize(text, add_bos)`, each media item wrapped as the
    model's transformers processor wraps it."""
    before, after = _wrapping(architecture)
    runs: list = []
    text, first = "", True
    for part in parts:
        if isinstance(part, str):
            text += part
            continue
        encoder = encoders.for_part(part)
        runs.append(tokenize(text + before, first))
        runs.extend(encoder.media_runs(part))
        text, first = after, False
    runs.append(tokenize(text, first))
    return PromptPlan([r for r in runs if not isinstance(r, list) or r])


def split_marked(prompt: str, media: Sequence[Union[Image, Audio]]) -> list[Part]:
    """A CLI prompt with `<__media__>` markers -> parts (media in order; before the text when it has none)."""
    pieces = prompt.split(MEDIA_MARKER)
    if len(pieces) == 1:
        return [*media, prompt]
    if len(pieces) - 1 != len(media):
        raise InvalidArgumentError(f"the prompt holds {len(pieces) - 1} {MEDIA_MARKER} markers for {len(media)} "
                                   "--image/--audio files; give one file per marker")
    parts: list[Part] = [pieces[0]]
    for item, text in zip(media, pieces[1:]):
        parts += [item, text]
    return [p for p in parts if not (isinstance(p, str) and not p)]
