"""Images and audio in prompts: the parts of a prompt and how each model wraps them.

A prompt is a sequence of parts: text (`str`), `Image` (a path, encoded bytes or an
RGB uint8 array) and `Audio` (a path, or an array with its sample rate). The model's
projector (mmproj, loaded with `load_model(..., mmproj=...)`) encodes the media;
each model family gets the text around its media that its transformers processor
writes (Gemma 3: "\\n\\n<start_of_image>" ... "<end_of_image>\\n\\n", the boundary tokens
coming from mtmd).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from edge_runtime.errors import InvalidArgumentError, UnsupportedModelError

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


def _image_array(part: Image, projector) -> np.ndarray:
    src = part.source
    if isinstance(src, np.ndarray):
        return src
    data = src if isinstance(src, bytes) else _read(src, "image")
    arr = projector.decode(data, f"the image {src if not isinstance(src, bytes) else '(bytes)'}")
    if arr.ndim != 3:
        raise InvalidArgumentError("an Image part holds audio; use Audio(...)")
    return arr


def _audio_array(part: Audio, projector) -> np.ndarray:
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


def build_media_prompt(parts: Sequence[Part], projector, architecture: str, marker: str) -> tuple[str, list[np.ndarray]]:
    """The text for mtmd (one `marker` per media item, wrapped as the model's processor does) and the media."""
    if projector is None:
        raise InvalidArgumentError("the prompt holds media but no projector is loaded: pass --mmproj FILE "
                                   "(load_model(..., mmproj=FILE)) with the model's mmproj GGUF")
    text, media = [], []
    for part in parts:
        if isinstance(part, str):
            text.append(part)
        elif isinstance(part, Image):
            if not projector.supports_vision:
                raise UnsupportedModelError(f"{projector.path} has no vision encoder: this model cannot see images")
            media.append(_image_array(part, projector))
            text.append(f"\n\n{marker}\n\n" if architecture == "gemma3" else marker)
        elif isinstance(part, Audio):
            if not projector.supports_audio:
                raise UnsupportedModelError(f"{projector.path} has no audio encoder: this model cannot hear audio")
            media.append(_audio_array(part, projector))
            text.append(marker)
        else:
            raise InvalidArgumentError(f"a prompt part must be text, Image or Audio, not {type(part).__name__}")
    return "".join(text), media


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
