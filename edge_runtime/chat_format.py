"""Gemma chat formatting for every generation.

Gemma 1, 2, 3 and 3n: `<start_of_turn>user ... <end_of_turn>` turns; there is
no system role, so the system prompt is folded into the first user turn
(separated by a blank line), as Gemma's own templates do.
Gemma 4: `<|turn>user ... <turn|>` turns with a native system turn, tool
declarations, tool calls and tool responses.

The GGUF's own template (Jinja) is used when present; the built-in formats
otherwise (the default model is a base model with no template).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from edge_runtime.errors import InvalidArgumentError

if TYPE_CHECKING:
    from edge_runtime.backend.core import LlamaModel
    from edge_runtime.tools import Tool, ToolCall

ROLES = ("system", "user", "assistant", "tool")
MEDIA_SLOT = "\ue000"  # a private-use character: where a message's media item sits in its rendered text


@dataclass
class Message:
    """One chat message. `tool_calls` on assistant messages; `name` on tool results; `media` (Image/Audio
    parts) on user messages, each placed where `content` holds MEDIA_SLOT (see `Message.of_parts`)."""

    role: str
    content: str = ""
    tool_calls: list["ToolCall"] = field(default_factory=list)
    name: str | None = None
    media: tuple = ()

    def __post_init__(self) -> None:
        if self.role == "model":
            self.role = "assistant"
        if self.role not in ROLES:
            raise InvalidArgumentError(f"unknown chat role {self.role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(self.content, str):
            raise InvalidArgumentError(f"message content must be text, not {type(self.content).__name__}")

    @classmethod
    def of_parts(cls, role: str, parts: Sequence[Any]) -> "Message":
        """A message from parts: text pieces with Image/Audio items between them."""
        from edge_runtime.media import media_kind

        text, media = [], []
        for part in parts:
            if isinstance(part, str):
                text.append(part.replace(MEDIA_SLOT, ""))
            else:
                media_kind(part)  # refuses anything but Image and Audio
                text.append(MEDIA_SLOT)
                media.append(part)
        return cls(role, "".join(text), media=tuple(media))

    def parts(self) -> list[Any]:
        """Text pieces and media items in order (the inverse of `of_parts`)."""
        pieces = self.content.split(MEDIA_SLOT)
        out: list[Any] = [pieces[0]]
        for item, text in zip(self.media, pieces[1:]):
            out += [item, text]
        return [p for p in out if not isinstance(p, str) or p]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in self.tool_calls
            ]
        if self.name:
            out["name"] = self.name
        return out


def as_messages(messages: Sequence[Message | dict[str, Any]]) -> list[Message]:
    out = []
    for m in messages:
        if isinstance(m, Message):
            out.append(m)
        elif isinstance(m, dict) and "role" in m:
            out.append(Message(m["role"], m.get("content") or "", name=m.get("name")))
        else:
            raise InvalidArgumentError(f"a chat message must be a Message or a dict with 'role' and 'content', not {m!r}")
    return out


class ChatFormat(ABC):
    """Renders messages to the prompt text a model was trained on (without BOS)."""

    name: str = ""
    end_of_turn: str = ""
    generation_prefix: str = ""  # text that opens the model's turn

    @abstractmethod
    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True, tools: Sequence["Tool"] = ()) -> str:
        ...

    start_of_turn: str = ""

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.end_of_turn,) if self.end_of_turn else ()

    @property
    def turn_tokens(self) -> tuple[str, ...]:
        """Control tokens that end a reply: the end of a turn, or the start of a new one."""
        return tuple(t for t in (self.end_of_turn, self.start_of_turn) if t)

    @staticmethod
    def for_model(architecture: str, gguf_template: str | None, llama: "LlamaModel | None" = None) -> "ChatFormat":
        builtin: ChatFormat = Gemma4Format() if architecture.startswith("gemma4") else GemmaFormat()
        if gguf_template:
            return JinjaFormat(gguf_template, fallback=builtin)
        return builtin


def fold_system(messages: Sequence[Message]) -> list[Message]:
    """Gemma 1-3n have no system role: prepend the system text to the first user turn."""
    system = [m.content for m in messages if m.role == "system"]
    rest = [m for m in messages if m.role != "system"]
    if not system:
        return rest
    text = "\n\n".join(s for s in system if s)
    if rest and rest[0].role == "user":
        first = rest[0]
        return [Message("user", f"{text}\n\n{first.content.strip()}" if first.content else text)] + rest[1:]
    return [Message("user", text)] + rest


class GemmaFormat(ChatFormat):
    """Gemma 1, 2, 3 and 3n."""

    name = "gemma"
    end_of_turn = "<end_of_turn>"
    start_of_turn = "<start_of_turn>"
    generation_prefix = "<start_of_turn>model\n"

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True, tools: Sequence["Tool"] = ()) -> str:
        from edge_runtime.tools import gemma3_tool_prompt, gemma3_format_call, gemma3_format_result

        messages = list(messages)
        if tools:
            prompt = gemma3_tool_prompt(tools)
            sys_idx = next((i for i, m in enumerate(messages) if m.role == "system"), None)
            if sys_idx is None:
                messages.insert(0, Message("system", prompt))
            else:
                messages[sys_idx] = Message("system", f"{messages[sys_idx].content}\n\n{prompt}")
        parts = []
        for m in fold_system(messages):
            if m.role == "tool":
                # Gemma has no tool role: results go back in a user turn.
                parts.append(f"<start_of_turn>user\n{gemma3_format_result(m.name or 'tool', m.content)}<end_of_turn>\n")
                continue
            role = "model" if m.role == "assistant" else "user"
            content = m.content.strip()  # Gemma's templates trim every message
            if m.tool_calls:
                content = (content + "\n" if content else "") + gemma3_format_call(m.tool_calls)
            parts.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
        if add_generation_prompt:
            parts.append(self.generation_prefix)
        return "".join(parts)


class Gemma4Format(ChatFormat):
    """Gemma 4: native system turn, tool tokens, empty thought channel when not thinking."""

    name = "gemma4"
    end_of_turn = "<turn|>"
    start_of_turn = "<|turn>"
    generation_prefix = "<|turn>model\n<|channel>thought\n<channel|>"

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True, tools: Sequence["Tool"] = ()) -> str:
        from edge_runtime.tools import gemma4_format_call, gemma4_format_declaration, gemma4_format_result

        messages = list(messages)
        parts = []
        system = [m.content.strip() for m in messages if m.role == "system"]
        if system or tools:
            decl = "".join(f"<|tool>{gemma4_format_declaration(t)}<tool|>" for t in tools)
            parts.append(f"<|turn>system\n{chr(10).join(system)}{decl}<turn|>\n")
        open_tool_response = False
        for m in messages:
            if m.role == "system":
                continue
            if m.role == "tool":
                parts.append(gemma4_format_result(m.name or "tool", m.content))
                open_tool_response = True
                continue
            role = "model" if m.role == "assistant" else "user"
            content = m.content.strip() if role == "user" else m.content
            calls = "".join(gemma4_format_call(c) for c in m.tool_calls)
            # After tool responses the model goes on in the same turn.
            header = "" if (open_tool_response and role == "model") else f"<|turn>{role}\n"
            if open_tool_response and role != "model":
                parts.append("<turn|>\n")
            open_tool_response = False
            if calls:
                # The model's turn stays open: tool responses follow in it.
                parts.append(f"{header}{content}{calls}")
                open_tool_response = True
                continue
            parts.append(f"{header}{content}<turn|>\n")
        if open_tool_response:
            if add_generation_prompt:
                return "".join(parts)  # the model continues its own turn after the responses
            parts.append("<turn|>\n")
        if add_generation_prompt:
            parts.append(self.generation_prefix)
        return "".join(parts)


class JinjaFormat(ChatFormat):
    """A GGUF's own chat template, rendered in a sandbox."""

    name = "gguf-template"

    def __init__(self, template: str, fallback: ChatFormat) -> None:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.fallback = fallback
        self.end_of_turn = fallback.end_of_turn
        self.start_of_turn = fallback.start_of_turn
        self.generation_prefix = fallback.generation_prefix
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())

        def raise_exception(message: str) -> None:
            raise InvalidArgumentError(f"the model's chat template refused the conversation: {message}")

        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
        try:
            self.template = env.from_string(template)
        except jinja2.TemplateError as exc:
            raise InvalidArgumentError(f"the model's chat template is not valid Jinja ({exc}); it cannot be used") from None
        self.source = template

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True, tools: Sequence["Tool"] = ()) -> str:
        msgs = list(messages)
        if isinstance(self.fallback, GemmaFormat):
            msgs = fold_system(msgs)  # Gemma 1/2 templates raise on a system role
        text = self.template.render(
            messages=[m.as_dict() for m in msgs],
            tools=[t.as_openai() for t in tools] or None,
            add_generation_prompt=add_generation_prompt,
            bos_token="",  # the tokenizer adds BOS
            eos_token="",
        )
        return text
