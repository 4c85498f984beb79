"""Function calling: tool definitions, prompts, parsing model output into calls, grammars.

Gemma 1-3n call tools in text: the prompt lists the functions as JSON and
asks for `[name(arg=value, ...)]`; models also answer with ```tool_code
blocks or JSON objects, all of which are parsed. Gemma 4 has native tokens:
`<|tool_call>call:name{key:value}<tool_call|>` with strings quoted by `<|"|>`.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from edge_runtime.errors import ToolCallError

Q = '<|"|>'  # Gemma 4's string delimiter


@dataclass(frozen=True)
class Tool:
    """A function the model may call, described by a JSON schema for its arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", self.name):
            raise ToolCallError(f"tool name {self.name!r} is not a valid identifier (letters, digits, _ . -)")
        if not isinstance(self.parameters, dict) or self.parameters.get("type", "object") != "object" \
                or not isinstance(self.description, str):
            raise ToolCallError(f"tool {self.name!r}: parameters must be a JSON schema of type 'object' "
                                "and description a string")

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> "Tool":
        """From an OpenAI-style {"type": "function", "function": {...}} or a bare function spec."""
        fn = spec.get("function", spec) if isinstance(spec, dict) else None
        if not isinstance(fn, dict) or "name" not in fn:
            raise ToolCallError(f"a tool definition needs a 'name' (and 'parameters' JSON schema): {spec!r}")
        return cls(fn["name"], fn.get("description", ""), fn.get("parameters") or {"type": "object", "properties": {}})

    def as_openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


def as_tools(tools: Iterable[Tool | dict[str, Any]] | None) -> list[Tool]:
    return [t if isinstance(t, Tool) else Tool.from_dict(t) for t in (tools or ())]


# --------------------------------------------------------------------------- Gemma 1-3n (text)


def gemma3_tool_prompt(tools: Sequence[Tool]) -> str:
    specs = json.dumps([t.as_openai()["function"] for t in tools], ensure_ascii=False, indent=2)
    return (
        "You have access to functions. If you decide to invoke any of the function(s), you MUST put it in the format of\n"
        "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]\n\n"
        "You SHOULD NOT include any other text in the response if you call a function\n"
        f"{specs}"
    )


def _py_literal(value: Any) -> str:
    return repr(value) if not isinstance(value, bool) else ("True" if value else "False")


def gemma3_format_call(calls: Sequence[ToolCall]) -> str:
    inner = ", ".join(f"{c.name}({', '.join(f'{k}={_py_literal(v)}' for k, v in c.arguments.items())})" for c in calls)
    return f"[{inner}]"


def gemma3_format_result(name: str, content: str) -> str:
    return f"```tool_output\n{content}\n```"


def _calls_from_ast(node: ast.AST) -> list[ToolCall]:
    nodes = node.elts if isinstance(node, (ast.List, ast.Tuple)) else [node]
    calls = []
    for n in nodes:
        if not isinstance(n, ast.Call) or n.args:
            raise ValueError("not a keyword-only call")
        name = ast.unparse(n.func)
        args = {kw.arg: ast.literal_eval(kw.value) for kw in n.keywords if kw.arg}
        calls.append(ToolCall(name, args))
    return calls


def _json_objects(text: str) -> Iterable[Any]:
    decoder = json.JSONDecoder()
    i = 0
    while True:
        i = text.find("{", i)
        if i == -1:
            return
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        yield obj
        i = end


def parse_gemma3_calls(text: str, tools: Sequence[Tool] = ()) -> list[ToolCall]:
    """Tool calls in Gemma 1-3n output: [f(a=1)], ```tool_code blocks, or JSON objects."""
    known = {t.name for t in tools}
    candidates = [m.group(1) for m in re.finditer(r"```(?:tool_code|python)?\s*\n(.*?)```", text, re.S)]
    candidates += [m.group(0) for m in re.finditer(r"\[\s*[A-Za-z_][\w.]*\(.*?\)\s*\]", text, re.S)]
    candidates += [m.group(0) for m in re.finditer(r"(?<![\w\[])[A-Za-z_][\w.]*\([^()]*\)", text.strip())] if known else []
    for cand in candidates:
        try:
            calls = _calls_from_ast(ast.parse(cand.strip(), mode="eval").body)
        except (SyntaxError, ValueError):
            continue
        if calls and (not known or all(c.name in known for c in calls)):
            return calls
    calls = []
    for obj in _json_objects(text):
        items = obj if isinstance(obj, list) else [obj]
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                args = item.get("arguments", item.get("parameters", {}))
                if isinstance(args, str):
                    try:
                        args = json.loads(args)
                    except json.JSONDecodeError:
                        continue
                if isinstance(args, dict) and (not known or item["name"] in known):
                    calls.append(ToolCall(item["name"], args))
    return calls


# --------------------------------------------------------------------------- Gemma 4 (native tokens)


def _g4_value(value: Any, escape_keys: bool = False) -> str:
    if isinstance(value, str):
        return f"{Q}{value}{Q}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        key = (lambda k: f"{Q}{k}{Q}") if escape_keys else (lambda k: k)
        return "{" + ",".join(f"{key(k)}:{_g4_value(v, escape_keys)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_g4_value(v, escape_keys) for v in value) + "]"
    return str(value)


def _g4_schema(props: dict[str, Any]) -> str:
    out = []
    for key, spec in sorted(props.items()):
        fields = []
        if spec.get("description"):
            fields.append(f"description:{Q}{spec['description']}{Q}")
        typ = str(spec.get("type", "string")).upper()
        if typ == "STRING" and spec.get("enum"):
            fields.append(f"enum:{_g4_value(spec['enum'])}")
        if typ == "OBJECT" and isinstance(spec.get("properties"), dict):
            fields.append("properties:{" + _g4_schema(spec["properties"]) + "}")
        if typ == "ARRAY" and isinstance(spec.get("items"), dict):
            items = spec["items"]
            fields.append("items:{" + f"type:{Q}{str(items.get('type', 'string')).upper()}{Q}" + "}")
        fields.append(f"type:{Q}{typ}{Q}")
        out.append(f"{key}:{{{','.join(fields)}}}")
    return ",".join(out)


def gemma4_format_declaration(tool: Tool) -> str:
    params = tool.parameters
    body = [f"description:{Q}{tool.description}{Q}"]
    inner = []
    if params.get("properties"):
        inner.append("properties:{" + _g4_schema(params["properties"]) + "}")
    if params.get("required"):
        inner.append("required:[" + ",".join(f"{Q}{r}{Q}" for r in params["required"]) + "]")
    inner.append(f"type:{Q}OBJECT{Q}")
    body.append("parameters:{" + ",".join(inner) + "}")
    return f"declaration:{tool.name}{{{','.join(body)}}}"


def gemma4_format_call(call: ToolCall) -> str:
    args = ",".join(f"{k}:{_g4_value(v)}" for k, v in sorted(call.arguments.items()))
    return f"<|tool_call>call:{call.name}{{{args}}}<tool_call|>"


def gemma4_format_result(name: str, content: str) -> str:
    try:
        value = json.loads(content)
    except (json.JSONDecodeError, TypeError):
        value = content
    if isinstance(value, dict):
        body = ",".join(f"{k}:{_g4_value(v)}" for k, v in sorted(value.items()))
    else:
        body = f"value:{_g4_value(value)}"
    return f"<|tool_response>response:{name}{{{body}}}<tool_response|>"


class _G4Parser:
    """Recursive-descent parser for Gemma 4's call arguments: {key:value,...}."""

    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def error(self, what: str) -> ToolCallError:
        return ToolCallError(f"malformed Gemma 4 tool call near {self.s[self.i:self.i + 20]!r}: {what}")

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def value(self) -> Any:
        self.ws()
        s = self.s
        if s.startswith(Q, self.i):
            end = s.find(Q, self.i + len(Q))
            if end == -1:
                raise self.error("unterminated string")
            out = s[self.i + len(Q) : end]
            self.i = end + len(Q)
            return out
        if s.startswith("{", self.i):
            return self.obj()
        if s.startswith("[", self.i):
            self.i += 1
            items = []
            self.ws()
            if s.startswith("]", self.i):
                self.i += 1
                return items
            while True:
                items.append(self.value())
                self.ws()
                if s.startswith(",", self.i):
                    self.i += 1
                elif s.startswith("]", self.i):
                    self.i += 1
                    return items
                else:
                    raise self.error("expected , or ]")
        m = re.compile(r"[^,}\]]+").match(s, self.i)
        if not m:
            raise self.error("expected a value")
        self.i = m.end()
        raw = m.group(0).strip()
        lowered = raw.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("null", "none"):
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw

    def obj(self) -> dict[str, Any]:
        s = self.s
        if not s.startswith("{", self.i):
            raise self.error("expected {")
        self.i += 1
        out: dict[str, Any] = {}
        self.ws()
        if s.startswith("}", self.i):
            self.i += 1
            return out
        while True:
            self.ws()
            if s.startswith(Q, self.i):
                key = self.value()
            else:
                colon = s.find(":", self.i)
                if colon == -1:
                    raise self.error("expected key:")
                key = s[self.i : colon].strip()
                self.i = colon
            self.ws()
            if not s.startswith(":", self.i):
                raise self.error("expected :")
            self.i += 1
            out[str(key)] = self.value()
            self.ws()
            if s.startswith(",", self.i):
                self.i += 1
            elif s.startswith("}", self.i):
                self.i += 1
                return out
            else:
                raise self.error("expected , or }")


def parse_gemma4_calls(text: str) -> list[ToolCall]:
    """Gemma 4 native calls: <|tool_call>call:name{key:value,...}<tool_call|>."""
    calls = []
    for m in re.finditer(r"<\|tool_call>\s*call:([A-Za-z_][\w.-]*)\s*", text):
        parser = _G4Parser(text)
        parser.i = m.end()
        args = parser.obj()
        calls.append(ToolCall(m.group(1), args))
    return calls


def parse_tool_calls(text: str, tools: Sequence[Tool] = ()) -> list[ToolCall]:
    """Calls in any Gemma generation's output (native Gemma 4 tokens first)."""
    if "<|tool_call>" in text:
        return parse_gemma4_calls(text)
    return parse_gemma3_calls(text, tools)


# --------------------------------------------------------------------------- grammars


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """A GBNF grammar that only admits JSON matching `schema`."""
    from edge_runtime.backend.core import json_schema_to_gbnf

    return json_schema_to_gbnf(schema)


def tool_call_grammar(tools: Sequence[Tool]) -> str:
    """A GBNF grammar for exactly one JSON call {"name": ..., "arguments": {...}} to one of `tools`."""
    if not tools:
        raise ToolCallError("a tool-call grammar needs at least one tool")
    schema = {
        "oneOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                "required": ["name", "arguments"],
            }
            for t in tools
        ]
    }
    return json_schema_grammar(schema)
