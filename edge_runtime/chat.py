"""Chat in a small context window that never overflows.

Window policy:
- the system prompt is pinned (it must fit in half the window: checked when set);
- the oldest exchanges are shifted out, a whole user turn (with the replies and
  tool results that followed it) at a time; once out they stay out, so the
  cached prefix stays stable;
- room for the reply is reserved: min(max_tokens, n_ctx / 2) tokens;
- a single message longer than what is left keeps its *last* tokens (the end
  of a message usually holds the question) and the turn is flagged
  `truncated`, with a warning logged.

The KV cache is reused across turns (common prefix, then the kept turns are
shifted into place), so a turn evaluates only its new tokens plus whatever
the shift could not reuse.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from edge_runtime.chat_format import MEDIA_SLOT, Message, as_messages
from edge_runtime.errors import ContextSizeError, EdgeRuntimeError, InvalidArgumentError
from edge_runtime.generate import CancelToken, GenerationResult, GenerationSettings, Stream, suggest_ctx
from edge_runtime.media import Part
from edge_runtime.model import Model
from edge_runtime.prompt_plan import PromptPlan
from edge_runtime.tools import Tool, ToolCall, as_tools, parse_tool_calls

log = logging.getLogger(__name__)


@dataclass
class ChatResult(GenerationResult):
    """A reply, with what the window did to fit it."""

    tool_calls: list[ToolCall] = field(default_factory=list)
    dropped_messages: int = 0  # messages shifted out of the window before this turn
    truncated: bool = False  # the new message was cut to fit
    window_tokens: int = 0  # prompt tokens sent for this turn

    def as_dict(self) -> dict[str, object]:
        out = super().as_dict()
        if self.tool_calls:
            out["tool_calls"] = [c.as_dict() for c in self.tool_calls]
        if self.truncated:
            out["truncated"] = True
        return out


class TurnTokenCache:
    """Tokenizes a rendered conversation turn by turn, remembering turns already seen.

    llama.cpp cuts text at control tokens before tokenizing the pieces between
    them, so cutting in front of every turn-opening token and joining the
    pieces' tokens gives exactly the tokens of the whole text. A new turn then
    costs only its own tokenization, however long the window is.
    """

    def __init__(self, model: Model, marker: str, max_entries: int = 512) -> None:
        self.model = model
        # Cutting at the marker is exact only where the vocabulary has it as one control token;
        # otherwise the text is tokenized whole (and cached whole).
        marker_id = model.llama.token_id(marker) if marker else None
        self.marker = marker if marker_id is not None and model.llama.is_control(marker_id) else ""
        self.max_entries = max_entries
        self._cache: OrderedDict[tuple[bool, str], list[int]] = OrderedDict()

    def _pieces(self, text: str) -> list[str]:
        if not self.marker:
            return [text]
        parts = text.split(self.marker)
        return [p for p in parts[:1] if p] + [self.marker + p for p in parts[1:]]

    def tokenize(self, text: str, bos: bool = True) -> list[int]:
        out: list[int] = []
        for i, piece in enumerate(self._pieces(text) or [""]):
            key = (bos and i == 0, piece)
            tokens = self._cache.get(key)
            if tokens is None:
                tokens = self.model.tokenize(piece, add_bos=key[0], special=True)
                self._cache[key] = tokens
                if len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
            out.extend(tokens)
        return out


class ChatSession:
    """A conversation with a model. Send messages; replies stream as text pieces."""

    def __init__(
        self,
        model: Model,
        system: str | None = None,
        *,
        settings: GenerationSettings | None = None,
        tools: Sequence[Tool | dict[str, Any]] | None = None,
        keep_shifted: int = 32,
    ) -> None:
        self.model = model
        model.warn_if_base("chat")
        self.settings = settings or GenerationSettings()
        self.tools = as_tools(tools)
        self.format = model.chat_format
        ids = (model.llama.token_id(t) for t in self.format.turn_tokens)
        self._stop_tokens = tuple(i for i in ids if i is not None)
        self._turn_tokens = TurnTokenCache(model, self.format.start_of_turn)
        self.messages: list[Message] = []  # the window, after at most `keep_shifted` messages shifted out
        self.keep_shifted = keep_shifted
        self.system: str | None = None
        self._window_start = 0
        self.set_system(system)

    # conversation state
    def set_system(self, text: str | None) -> None:
        """Set (or clear with None/"") the pinned system prompt."""
        text = text or None
        if text is not None:
            n = len(self._tokenize([Message("system", text), Message("user", "")], generation=True))
            if n > self.model.n_ctx // 2:
                raise ContextSizeError(
                    f"the system prompt takes {n} tokens, more than half of the {self.model.n_ctx}-token window; "
                    "shorten it or load the model with a larger --ctx"
                )
        self.system = text

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages.clear()
        self._window_start = 0

    def add_tool_result(self, name: str, content: str) -> None:
        """Give the model a tool's result; the next `send` (or `reply`) continues from it."""
        self.messages.append(Message("tool", content, name=name))

    def load(self, messages: Sequence[Message | dict[str, Any]]) -> None:
        """Replace the history (system messages set the pinned prompt)."""
        msgs = as_messages(messages)
        self.reset()
        systems = [m.content for m in msgs if m.role == "system"]
        if systems:
            self.set_system("\n\n".join(systems))
        self.messages.extend(m for m in msgs if m.role != "system")

    # prompt building
    def _pinned(self) -> list[Message]:
        return [Message("system", self.system)] if self.system else []

    def _tokenize(self, messages: Sequence[Message], *, generation: bool = True) -> PromptPlan:
        text = self.format.render(messages, add_generation_prompt=generation, tools=self.tools)
        media = [item for m in messages for item in m.media]
        if text.count(MEDIA_SLOT) != len(media):
            raise InvalidArgumentError(f"the messages hold {len(media)} media items but their text "
                                       f"{text.count(MEDIA_SLOT)} places for them; build media messages with "
                                       "Message.of_parts or send a list of parts")
        if not media:
            return PromptPlan.of_tokens(self._turn_tokens.tokenize(text))
        parts = Message("user", text, media=tuple(media)).parts()
        return self.model.plan(parts, tokenize=self._turn_tokens.tokenize)

    def _next_start(self, start: int) -> int:
        """Index of the user message after the exchange that begins at `start`."""
        i = start + 1
        while i < len(self.messages) and self.messages[i].role != "user":
            i += 1
        return i

    def _build_window(self, reserve: int) -> tuple[PromptPlan, int, bool]:
        """The prompt for the current history; (plan, dropped, truncated)."""
        n_ctx = self.model.n_ctx
        budget = n_ctx - reserve
        dropped = 0
        start = self._window_start
        last = len(self.messages) - 1
        while True:
            window = self._pinned() + self.messages[self._window_start :]
            tokens = self._tokenize(window)
            if len(tokens) <= budget:
                return tokens, dropped, False
            nxt = self._next_start(self._window_start)
            if nxt > last:
                break
            dropped += nxt - self._window_start
            self._window_start = nxt
        # Only the newest exchange is left and it still does not fit: cut the last message.
        msg = self.messages[last]
        if msg.media:
            need = len(self._tokenize(self._pinned() + [msg]))
            self._window_start = start  # send() drops the message
            raise ContextSizeError(
                f"the message with its media takes {need} positions, but the {n_ctx}-position window has room for "
                f"{budget} besides the reply; load the model with --ctx {suggest_ctx(need + reserve)} or more, "
                "or send smaller or fewer media")
        head = self._pinned() + self.messages[self._window_start : last] + [Message(msg.role, "", name=msg.name)]
        room = budget - len(self._tokenize(head))
        if room <= 0:
            # The turns between the window start and the last message are too long: keep just the last one.
            dropped += last - self._window_start
            self._window_start = last
            head = self._pinned() + [Message(msg.role, "", name=msg.name)]
            room = budget - len(self._tokenize(head))
        content_tokens = self.model.tokenize(msg.content, add_bos=False, special=False)
        kept = self.model.detokenize(content_tokens[-room:]) if room > 0 else ""
        log.warning(
            "message of %d tokens truncated to its last %d to fit the %d-token window", len(content_tokens), max(room, 0), n_ctx
        )
        self.messages[last] = Message(msg.role, kept, name=msg.name)
        window = self._pinned() + self.messages[self._window_start :]
        tokens = self._tokenize(window)
        # Tokenizing the cut text can merge differently at the cut: trim whatever is left over.
        while len(tokens) > budget and self.messages[last].content:
            self.messages[last] = Message(msg.role, self.messages[last].content[1:], name=msg.name)
            tokens = self._tokenize(self._pinned() + self.messages[self._window_start :])
        return tokens, dropped, True

    # talking
    def send(
        self,
        content: str | Sequence[Part] | None,
        *,
        settings: GenerationSettings | None = None,
        cancel: CancelToken | None = None,
    ) -> Stream:
        """Add a user message (None: continue after tool results) and stream the reply. The message is
        text, or a list of parts mixing text with `media.Image` / `media.Audio` (the model's projector loaded).

        The returned Stream's `result` is a ChatResult once it has been consumed.
        """
        if content is not None:
            if isinstance(content, (list, tuple)):
                self.messages.append(Message.of_parts("user", content))
            elif isinstance(content, str):
                self.messages.append(Message("user", content))
            else:
                raise InvalidArgumentError(f"a chat message must be text or a list of parts, not {type(content).__name__}")
        elif not self.messages:
            raise InvalidArgumentError("nothing to reply to: send a message first")
        t_start = time.perf_counter()
        settings = settings or self.settings
        settings = settings.replace(
            stop=tuple(dict.fromkeys((*settings.stop, *self.format.stop_strings))),
            stop_tokens=tuple(dict.fromkeys((*settings.stop_tokens, *self._stop_tokens))),
        )
        reserve = max(1, min(settings.max_tokens, self.model.n_ctx // 2))
        n_before, start_before = len(self.messages), self._window_start
        try:
            tokens, dropped, truncated = self._build_window(reserve)
        except EdgeRuntimeError:
            if content is not None and len(self.messages) == n_before:  # a message that cannot be sent is not kept
                del self.messages[-1]
                self._window_start = min(start_before, len(self.messages))
            raise
        self._forget_shifted()
        settings = settings.replace(max_tokens=min(settings.max_tokens, self.model.n_ctx - len(tokens)))
        inner = self.model.generator.stream(tokens, settings, cancel)
        outer = Stream(iter(()), inner.cancel_token)
        outer._pieces = self._relay(inner, outer, dropped, truncated, len(tokens), time.perf_counter() - t_start)
        return outer

    def _forget_shifted(self) -> None:
        """Shifted-out messages never come back: keep only the last `keep_shifted` of them."""
        excess = self._window_start - self.keep_shifted
        if excess > 0:
            del self.messages[:excess]
            self._window_start -= excess

    def _relay(
        self, inner: Stream, outer: Stream, dropped: int, truncated: bool, n_tokens: int, window_s: float
    ) -> Iterator[str]:
        try:
            yield from inner
        finally:
            inner.close()
            res = inner.result
            if res is not None:
                if res.metrics.ttft_s:
                    res.metrics.ttft_s += window_s  # what the user waits for includes fitting the window
                calls = parse_tool_calls(res.text, self.tools) if self.tools else []
                self.messages.append(Message("assistant", res.text))
                outer.result = ChatResult(
                    res.text, res.finish_reason, res.tokens, res.metrics,
                    tool_calls=calls, dropped_messages=dropped, truncated=truncated, window_tokens=n_tokens,
                )

    def ask(self, content: str | None, **kwargs: Any) -> ChatResult:
        """Send a message and wait for the whole reply."""
        result = self.send(content, **kwargs).consume()
        assert isinstance(result, ChatResult)
        return result

    @property
    def window_messages(self) -> list[Message]:
        """The messages the model currently sees (pinned system prompt included)."""
        return self._pinned() + self.messages[self._window_start :]
