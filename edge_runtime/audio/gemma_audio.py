"""The `gemma` speech engine: Gemma 4 E2B/E4B (audio projector GGUF, in mtmd) or Gemma 3n E2B/E4B (ONNX
audio encoder, in onnxruntime) listening.

Transcription and speech translation use Gemma's own chat format: a user turn
holding the audio followed by the instruction, then the model turn, decoded
greedily by default and streamed as text. Audio is cut into pieces of at most
30 s (the longest clip either audio encoder takes), each cut placed at the
quietest moment of the last seconds before the limit; every piece is a fresh
prompt. The prompt goes through the runtime's media path (`Model.stream` with an
`Audio` part), so each model gets its audio wrapped as its processor does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edge_runtime.audio.engines import TextPiece, check_task
from edge_runtime.backend.mtmd import inspect_projector
from edge_runtime.errors import AudioError, InvalidArgumentError, UnsupportedModelError
from edge_runtime.gguf_file import read_header

SAMPLE_RATE = 16000
MAX_CHUNK_SECONDS = 30.0
AUDIO_TOKENS_PER_SECOND = 25

# Instructions in the structure of Gemma 4's audio prompt guide (ASR / AST).
_TRANSCRIBE = "Transcribe the following speech segment in {language} into {language} text."
_TRANSCRIBE_ANY = "Transcribe the following speech segment into text, in the language it is spoken in."
_TRANSLATE = "Transcribe the following speech segment in {source}, then translate it into {target}."
_TRANSLATE_ANY = "Translate the following speech segment into {target}."
_FORMAT_TRANSCRIPT = "Only output the transcription, with no newlines."
_FORMAT_TRANSLATION = "Only output the translation, with no newlines."


@dataclass(frozen=True)
class GemmaAudioSettings:
    """How the engine runs: context size, threads, decoding limits."""

    n_ctx: int = 2048  # a 30 s piece is 750 audio tokens; room for prompt and output
    n_batch: int = 512
    n_threads: int = 2
    max_new_tokens: int = 384  # per piece
    temperature: float = 0.0  # greedy
    seed: int = 0
    chunk_seconds: float = MAX_CHUNK_SECONDS
    search_seconds: float = 5.0  # look this far back from a piece's end for a quiet cut


@dataclass(frozen=True)
class AudioPiece:
    """A piece of the input, in seconds from its start."""

    start: float
    end: float


# Language codes (as Whisper and the CLI take them) to the names Gemma's prompts use.
LANGUAGE_NAMES = {
    "ar": "Arabic", "bn": "Bengali", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek",
    "en": "English", "es": "Spanish", "fa": "Persian", "fi": "Finnish", "fr": "French", "he": "Hebrew",
    "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean",
    "ms": "Malay", "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "th": "Thai", "tr": "Turkish",
    "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese", "zh": "Chinese",
}


def language_name(language: str | None) -> str | None:
    """"fr" or "fr-FR" -> "French"; names and unknown codes pass through unchanged."""
    if not language:
        return None
    code = language.strip().lower().replace("_", "-").split("-")[0]
    return LANGUAGE_NAMES.get(code, language.strip())


_TURNS = {  # the user turn holding the audio and the instruction, then the model turn opened
    "gemma4": ("<|turn>user\n", "<turn|>\n<|turn>model\n", ("<turn|>", "<|turn>")),
    "gemma3n": ("<start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n", ("<end_of_turn>", "<start_of_turn>")),
}


def build_prompt(architecture: str, instruction: str, audio: object) -> list:
    """Gemma's turn format as prompt parts: the audio, then the instruction, in one user turn."""
    head, tail, _ = _TURNS[architecture]
    return [head, audio, instruction + tail]


def task_instruction(task: str, language: str | None = None, target_language: str | None = None) -> str:
    """The instruction text for "transcribe" or "translate" (languages as names or codes)."""
    language, target_language = language_name(language), language_name(target_language)
    if task == "transcribe":
        head = _TRANSCRIBE.format(language=language) if language else _TRANSCRIBE_ANY
        return f"{head}\n{_FORMAT_TRANSCRIPT}"
    if task == "translate":
        if not target_language:
            raise InvalidArgumentError("translation needs a target language, e.g. target_language='French'")
        head = (_TRANSLATE.format(source=language, target=target_language) if language
                else _TRANSLATE_ANY.format(target=target_language))
        return f"{head}\n{_FORMAT_TRANSLATION}"
    raise InvalidArgumentError(f"unknown task {task!r}: use 'transcribe' or 'translate'")


def split_audio(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, *, chunk_seconds: float = MAX_CHUNK_SECONDS,
                search_seconds: float = 5.0) -> list[tuple[int, int]]:
    """Cut points [(begin, end)] in samples: pieces of at most chunk_seconds, cut where it is quietest."""
    if not 0 < chunk_seconds <= MAX_CHUNK_SECONDS:
        raise InvalidArgumentError(f"chunk_seconds must be in (0, {MAX_CHUNK_SECONDS:g}], got {chunk_seconds}")
    n = len(samples)
    limit = int(chunk_seconds * sample_rate)
    search = min(int(search_seconds * sample_rate), limit // 2)
    min_tail = min(sample_rate // 2, limit // 4)  # never leave a sliver of audio for the last piece
    frame = max(sample_rate // 50, 1)  # 20 ms energy frames
    pieces = []
    begin = 0
    while n - begin > limit:
        hi = min(begin + limit, n - min_tail)
        lo = max(hi - search, begin + 1)
        window = samples[lo:hi].astype(np.float64)
        n_frames = len(window) // frame
        if n_frames > 0:
            energy = (window[: n_frames * frame].reshape(n_frames, frame) ** 2).mean(axis=1)
            cut = lo + int(np.argmin(energy)) * frame + frame // 2
        else:
            cut = hi
        cut = min(max(cut, begin + 1), hi)
        pieces.append((begin, cut))
        begin = cut
    if begin < n:
        pieces.append((begin, n))
    return pieces


class GemmaSpeechEngine:
    """Speech to text with a Gemma 4 E2B/E4B GGUF and its audio projector (mmproj GGUF), or a Gemma 3n E2B/E4B
    GGUF and its audio encoder (audio.onnx from `edge-runtime convert-mmproj CKPT -o audio.onnx`).

    Implements `engines.SpeechEngine`; task "translate" means into
    `target_language` (English unless given), as for Whisper.
    """

    name = "gemma"
    sample_rate = SAMPLE_RATE

    def __init__(self, model_path: str | os.PathLike[str], mmproj_path: str | os.PathLike[str],
                 settings: GemmaAudioSettings | None = None, *, target_language: str | None = None) -> None:
        from edge_runtime.model import Model
        from edge_runtime.settings import RuntimeSettings

        self.settings = s = settings or GemmaAudioSettings()
        self.target_language = target_language or "English"
        self.model_path = Path(model_path)
        self.mmproj_path = Path(mmproj_path)
        header = read_header(self.model_path)  # ModelNotFoundError / InvalidModelError with a clear reason
        arch = header.architecture
        if arch not in _TURNS:
            raise UnsupportedModelError(
                f"{self.model_path} is a {arch!r} model; the gemma speech engine needs Gemma 4 or Gemma 3n E2B/E4B "
                "(a model with an audio encoder)"
            )
        onnx = self.mmproj_path.suffix.lower() == ".onnx"
        if arch == "gemma3n" and not onnx:
            raise UnsupportedModelError(
                f"{self.model_path} is Gemma 3n: its audio encoder does not run in llama.cpp's mtmd; pass the ONNX "
                "encoder instead (`edge-runtime convert-mmproj CKPT -o audio.onnx`, then --mmproj audio.onnx)"
            )
        if not onnx and not inspect_projector(self.mmproj_path).has_audio:
            raise UnsupportedModelError(
                f"{self.mmproj_path} has no audio encoder; convert the audio projector with "
                "`edge-runtime convert-mmproj <checkpoint> -o mmproj.gguf`"
            )
        self._model = Model(self.model_path, RuntimeSettings(
            n_ctx=min(s.n_ctx, header.context_length or s.n_ctx), n_batch=s.n_batch, n_ubatch=s.n_batch, n_threads=s.n_threads, n_threads_batch=s.n_threads,
            adaptive_threads=False), mmproj=self.mmproj_path)
        if self._model.media.audio is None:
            self.close()
            raise UnsupportedModelError(f"llama.cpp loaded {self.mmproj_path} without audio support")
        self.architecture = arch
        ids = (self._model.llama.token_id(t) for t in _TURNS[arch][2])
        self._stop_tokens = tuple(t for t in ids if t is not None)

    # lifecycle
    def close(self) -> None:
        if getattr(self, "_model", None) is not None:
            self._model.close()
            self._model = None

    def __enter__(self) -> "GemmaSpeechEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self):
        if self._model is None:
            raise InvalidArgumentError("the gemma speech engine has been closed")
        return self._model

    # audio in, text out
    def _check_audio(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        if sample_rate != SAMPLE_RATE:
            raise AudioError(
                f"the gemma engine takes {SAMPLE_RATE} Hz audio, got {sample_rate} Hz; "
                "load it with edge_runtime.audio.audio.load_audio (which resamples)"
            )
        arr = np.asarray(samples)
        if arr.ndim != 1:
            raise AudioError(f"audio must be mono 1-D samples, got shape {arr.shape}")
        if arr.size < SAMPLE_RATE // 25:
            raise AudioError(f"audio too short: {arr.size} samples (at least 40 ms are needed for one audio token)")
        return np.ascontiguousarray(arr, dtype=np.float32)

    def stream(self, samples: np.ndarray, *, sample_rate: int = SAMPLE_RATE, task: str = "transcribe",
               language: str | None = None, target_language: str | None = None,
               should_stop: Callable[[], bool] | None = None) -> Iterator[tuple[AudioPiece, str]]:
        """Yield (piece, text fragment) as the model writes; pieces of at most 30 s in order."""
        from edge_runtime.generate import CancelToken, GenerationSettings
        from edge_runtime.media import Audio

        model = self._require_open()
        arr = self._check_audio(samples, sample_rate)
        instruction = task_instruction(task, language, target_language)
        s = self.settings
        settings = GenerationSettings(temperature=s.temperature, seed=s.seed, max_tokens=s.max_new_tokens,
                                      stop_tokens=self._stop_tokens)
        for begin, end in split_audio(arr, SAMPLE_RATE, chunk_seconds=s.chunk_seconds, search_seconds=s.search_seconds):
            piece = AudioPiece(begin / SAMPLE_RATE, end / SAMPLE_RATE)
            cancel = CancelToken()
            prompt = build_prompt(self.architecture, instruction, Audio(arr[begin:end], sample_rate=SAMPLE_RATE))
            with model.stream(prompt, settings, cancel=cancel) as stream:
                for text in stream:
                    yield piece, text
                    if should_stop is not None and should_stop():
                        cancel.cancel()
            if should_stop is not None and should_stop():
                return

    def transcribe(self, audio_16k: np.ndarray, *, language: str | None = None,
                   task: str = "transcribe") -> Iterator[TextPiece]:
        """SpeechEngine: one TextPiece per <= 30 s piece, timed from the start of `audio_16k`."""
        check_task(task)
        target = self.target_language if task == "translate" else None
        current: AudioPiece | None = None
        texts: list[str] = []
        for piece, text in self.stream(audio_16k, task=task, language=language, target_language=target):
            if piece != current and current is not None:
                if "".join(texts).strip():
                    yield TextPiece("".join(texts).strip(), current.start, current.end)
                texts = []
            current = piece
            texts.append(text)
        if current is not None and "".join(texts).strip():
            yield TextPiece("".join(texts).strip(), current.start, current.end)

    def transcribe_text(self, samples: np.ndarray, *, sample_rate: int = SAMPLE_RATE, language: str | None = None) -> str:
        """The whole transcript (pieces joined by a space)."""
        return self._collect(self.stream(samples, sample_rate=sample_rate, task="transcribe", language=language))

    def translate_text(self, samples: np.ndarray, target_language: str, *, sample_rate: int = SAMPLE_RATE,
                       language: str | None = None) -> str:
        """Speech in one language to text in `target_language`."""
        return self._collect(self.stream(samples, sample_rate=sample_rate, task="translate", language=language,
                                         target_language=target_language))

    @staticmethod
    def _collect(fragments: Iterator[tuple[AudioPiece, str]]) -> str:
        texts: list[list[str]] = []
        last: AudioPiece | None = None
        for piece, text in fragments:
            if piece != last:
                texts.append([])
                last = piece
            texts[-1].append(text)
        return " ".join("".join(t).strip() for t in texts).strip()

    def audio_embeddings(self, samples: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """The encoder's embeddings of the audio, [n_rows, n_embd]: Gemma 4's 25 per second, or Gemma 3n's
        188 + 1 rows per 30 s clip (padding and <end_of_audio> included)."""
        from edge_runtime.media import Audio

        encoder = self._require_open().media.audio
        arr = self._check_audio(samples, sample_rate)
        if hasattr(encoder, "encode_audio"):
            return encoder.encode_audio(arr, SAMPLE_RATE)
        spans = [r for r in encoder.media_runs(Audio(arr, sample_rate=SAMPLE_RATE)) if not isinstance(r, list)]
        return np.concatenate([encoder.embeddings(span) for span in spans])


def create_engine(model: str | os.PathLike[str] | None = None, mmproj: str | os.PathLike[str] | None = None, *,
                  target_language: str | None = None, **settings) -> GemmaSpeechEngine:
    """The registry's factory (`engines.create_engine("gemma", model=..., mmproj=...)`)."""
    if not model or not mmproj:
        raise InvalidArgumentError("the gemma engine needs a Gemma 4 model GGUF and its audio projector "
                                   "(--model GEMMA4.gguf --mmproj MMPROJ.gguf) or a Gemma 3n GGUF and its audio "
                                   "encoder (--model GEMMA3N.gguf --mmproj audio.onnx)")
    try:
        gemma_settings = GemmaAudioSettings(**settings)
    except TypeError as exc:
        raise InvalidArgumentError(f"unknown gemma engine setting: {exc}") from None
    return GemmaSpeechEngine(model, mmproj, gemma_settings, target_language=target_language)
