"""Cascade translation: a transcript translated by the Gemma text runtime.

Speech -> text (any engine) -> Gemma (`edge_runtime.chat.ChatSession`) ->
text in the target language.  Each segment is a fresh one-turn chat so the
window never grows with the recording.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterator

from edge_runtime.audio.transcribe import TranscriptionResult
from edge_runtime.errors import AudioError, InvalidArgumentError

PROMPT = ("Translate the following text into {target}. Reply with the translation only, "
          "without notes or quotes.\n\n{text}")


@dataclass(frozen=True)
class TranslateSettings:
    target_language: str
    max_tokens: int = 256
    temperature: float = 0.0  # greedy: translations should be reproducible


class CascadeTranslator:
    """Translate text pieces with a loaded `edge_runtime.Model` (not owned: the caller closes it)."""

    def __init__(self, model: Any, settings: TranslateSettings):
        if not settings.target_language or not settings.target_language.strip():
            raise InvalidArgumentError("a target language is needed, e.g. --translate-to French")
        from edge_runtime.chat import ChatSession
        from edge_runtime.generate import GenerationSettings

        self.settings = settings
        self._generation = GenerationSettings(max_tokens=settings.max_tokens, temperature=settings.temperature)
        self._session = ChatSession(model, settings=self._generation)

    def stream(self, text: str) -> Iterator[str]:
        """Translation of `text`, streamed as text pieces."""
        if not text.strip():
            return
        self._session.reset()
        prompt = PROMPT.format(target=self.settings.target_language, text=text.strip())
        # A segment's translation is one paragraph about as long as the text: bound
        # it so a model that rambles or echoes cannot run on for max_tokens.
        budget = min(self.settings.max_tokens, 4 * len(text.split()) + 16)
        settings = self._generation.replace(max_tokens=budget, stop=("\n\n",))
        with self._session.send(prompt, settings=settings) as pieces:
            yield from pieces

    def translate(self, text: str) -> str:
        """The translation of `text`; TranslationError when the model gave something that is not one."""
        out = "".join(self.stream(text)).strip()
        problem = not_a_translation(text, out)
        if problem:
            raise TranslationError(
                f"the text model did not translate ({problem}); base models do not follow instructions: "
                "use an instruction-tuned Gemma, e.g. --text-model gemma-3-1b-it-Q4_K_M.gguf "
                "(edge-runtime convert google/gemma-3-1b-it -o gemma-3-1b-it.gguf --outtype Q4_K_M)")
        return out

    def translate_result(self, result: TranscriptionResult) -> TranscriptionResult:
        """A copy of `result` with each segment's translation beside its transcript (times kept).

        When the model does not translate, the transcript is returned unchanged with
        `translation_error` saying why.
        """
        try:
            segments = [replace(s, translation=self.translate(s.text)) for s in result.segments]
        except TranslationError as exc:
            return replace(result, translation_error=str(exc))
        metrics = dict(result.metrics, translated_to=self.settings.target_language)
        return replace(result, segments=segments, metrics=metrics)


class TranslationError(AudioError):
    """The model's output is not a translation (empty, or the instruction echoed)."""


_ECHO_MARKERS = ("translate the following", "reply with the translation", "without notes or quotes")


def not_a_translation(source: str, output: str) -> str | None:
    """Why `output` is not a translation of `source`, or None when it may be one."""
    if not output.strip():
        return "its output was empty"
    low = " ".join(output.lower().split())
    if any(marker in low for marker in _ECHO_MARKERS):
        return "it echoed the instruction"
    src = " ".join(source.lower().split())
    if len(src.split()) >= 3 and low.strip(" .\"'") == src.strip(" .\"'"):
        return "it repeated the text unchanged"
    return None
