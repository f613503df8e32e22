"""Tool calling: tools and ``tool_choice`` as LangChain accepts them -> what the decoder needs.

A reply that calls a tool is one JSON object, ``{"name": <tool>, "arguments": {...}}``,
decoded under a grammar built from the tools' JSON Schemas, so a small model cannot emit a
call to a tool that does not exist or arguments of the wrong shape. With ``tool_choice``
"auto" a relevance gate decides between a call and a text reply before decoding
(``curp_chain.chat.tools.gate``); without the gate the grammar also allows plain text that does
not start with ``{``, and the model decides with its first token.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.json_schema import dereference_refs

from curp_chain.errors import CurpError

ToolMode = Literal["auto", "required", "none"]
"""auto: a call or text, the model chooses; required: a call; none: text only."""


@dataclass(frozen=True)
class ToolSpec:
    """One tool as the prompt and the grammar see it."""

    name: str
    """The name a call gives (the function's or the tool's name)."""
    description: str
    """What the tool does, shown to the LLM and matched by the relevance gate."""
    parameters: Mapping[str, Any]
    """JSON Schema of the arguments object, with every ``$ref`` resolved."""

    def as_openai(self) -> dict[str, Any]:
        """The OpenAI / Hugging Face shape chat templates expect in their ``tools``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


@dataclass(frozen=True)
class ToolChoice:
    """What the next reply may do: ``mode``, and which tools a call may name."""

    mode: ToolMode
    names: tuple[str, ...]
    """The tools a call may name: all bound tools, or the one tool_choice names."""


def to_tool_spec(tool: Any, *, strict: bool | None = None) -> ToolSpec:
    """A LangChain tool, a Pydantic class, a function or an OpenAI-style dict as a ToolSpec."""
    try:
        converted = convert_to_openai_tool(tool, strict=strict)
    except Exception as error:  # the converter raises several kinds for unusable input
        raise CurpError(f"cannot use {tool!r} as a tool: {error}") from None
    function = converted.get("function")
    if converted.get("type") != "function" or not isinstance(function, dict):
        raise CurpError(f"cannot use {tool!r} as a tool: only function tools are supported")
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    parameters = dereference_refs(parameters)
    parameters = {k: v for k, v in parameters.items() if k != "$defs"}
    return ToolSpec(str(function["name"]), str(function.get("description", "")), parameters)


def tool_specs(tools: Sequence[Any], *, strict: bool | None = None) -> tuple[ToolSpec, ...]:
    """The tools as specs; the same tool given twice (a Pydantic class and its JSON Schema)
    counts once, two different tools of one name are refused."""
    specs: dict[str, ToolSpec] = {}
    for tool in tools:
        spec = to_tool_spec(tool, strict=strict)
        known = specs.setdefault(spec.name, spec)
        if _without_titles(known.parameters) != _without_titles(spec.parameters):
            raise CurpError(
                f"two different tools share the name {spec.name!r}; tool names must differ"
            )
    return tuple(specs.values())


def _without_titles(schema: Any) -> Any:
    """A JSON Schema without its "title" keys, which only name things (a Pydantic class's
    schema has them, the same tool written as a dict may not)."""
    if isinstance(schema, Mapping):
        return {k: _without_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_without_titles(v) for v in schema]
    return schema


def resolve_tool_choice(choice: Any, specs: Sequence[ToolSpec]) -> ToolChoice:
    """``tool_choice`` as LangChain documents it: None, False or "auto": the model chooses;
    "any", "required" or True: some tool must be called; "none": no call; a tool name or
    ``{"type": "function", "function": {"name": ...}}``: that tool must be called."""
    names = tuple(spec.name for spec in specs)
    if choice is None or choice is False or choice == "auto":
        return ToolChoice("auto", names)
    if choice is True or choice in ("any", "required"):
        return ToolChoice("required", names)
    if choice == "none":
        return ToolChoice("none", ())
    name: Any = choice
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else choice.get("name")
    if not isinstance(name, str):
        raise CurpError(
            f"unknown tool_choice {choice!r}; use 'auto', 'any', 'required', 'none', True, "
            "False, a tool name or {'type': 'function', 'function': {'name': ...}}"
        )
    if name not in names:
        raise CurpError(f"tool_choice names {name!r}, which is not among the tools {list(names)}")
    return ToolChoice("required", (name,))


def call_schema(specs: Sequence[ToolSpec], names: Sequence[str]) -> dict[str, Any]:
    """JSON Schema of one call to one of ``names``: the grammar the reply is decoded under."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": spec.name}, "arguments": dict(spec.parameters)},
            "required": ["name", "arguments"],
        }
        for spec in specs
        if spec.name in names
    ]
    if not options:
        raise CurpError("a tool call was required but no tools are bound")
    return options[0] if len(options) == 1 else {"anyOf": options}


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def arguments_json(arguments: Any) -> str:
    return json.dumps(arguments, ensure_ascii=False, separators=(", ", ": "))


def smallest_value(schema: Any) -> Any:
    """The shortest value ``schema`` accepts, as far as a rough reading tells (an object
    with its required properties only, "" for a string, 0 for a number, an array of its
    ``minItems``): what a call needs at the least."""
    if not isinstance(schema, Mapping):
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return min(schema["enum"], key=lambda v: len(json.dumps(v)))
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list) and options:
        return min((smallest_value(o) for o in options), key=lambda v: len(json.dumps(v)))
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and isinstance(schema.get("properties"), Mapping):
        kind = "object"
    if kind == "object":
        properties = schema.get("properties") or {}
        required = [k for k in schema.get("required", []) if k in properties]
        return {k: smallest_value(properties[k]) for k in required}
    if kind == "array":
        return [smallest_value(schema.get("items"))] * int(schema.get("minItems", 0))
    defaults = {"string": "", "integer": 0, "number": 0, "boolean": False}
    return defaults.get(str(kind))


def smallest_call(spec: ToolSpec) -> str:
    """The shortest call to ``spec`` (JSON), as the grammar lets the model write it."""
    return json.dumps({"name": spec.name, "arguments": smallest_value(spec.parameters)})
