"""A request's tools, tool choice and response format -> the grammar it is decoded under."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from curp_chain.chat.structured import ANY_JSON_OBJECT
from curp_chain.chat.tools.specs import (
    ToolChoice,
    ToolSpec,
    call_schema,
    resolve_tool_choice,
    tool_specs,
)
from curp_chain.chat.tools.stream import ToolCallAssembler
from curp_chain.errors import CurpError


@dataclass(frozen=True)
class ToolDecoding:
    """How one request decodes: which tools it may call, and the grammar's JSON Schema."""

    specs: tuple[ToolSpec, ...]
    """The bound tools (empty when none are)."""
    choice: ToolChoice | None
    """None when no tools are bound."""
    response_schema: Mapping[str, Any] | None
    """The JSON Schema a non-call reply must match (structured output), if any."""
    json_schema: Mapping[str, Any] | None
    """What decoding is constrained to: calls, the response schema, or both."""
    json_or_text: bool
    """The reply may be a call or plain text, the LLM choosing with its first token."""
    no_json_start: bool = False
    """tool_choice "none" with tools bound: a text reply, not a copy of an earlier call."""

    @property
    def calls_allowed(self) -> bool:
        return self.choice is not None and self.choice.mode != "none"

    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools for a chat template that renders them itself."""
        return [spec.as_openai() for spec in self.specs] if self.calls_allowed else None

    def assembler(self) -> ToolCallAssembler | None:
        """A fresh per-request assembler, when the reply may be a call."""
        if not self.calls_allowed or self.choice is None:
            return None
        return ToolCallAssembler(self.choice.names, json_only=not self.json_or_text)


def response_format_schema(response_format: Any) -> Mapping[str, Any] | None:
    """An OpenAI-style ``response_format`` (what LangChain agents' ProviderStrategy binds)."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "json_object":
        return ANY_JSON_OBJECT
    if kind == "json_schema" and isinstance(response_format.get("json_schema"), Mapping):
        schema = response_format["json_schema"].get("schema")
        if isinstance(schema, Mapping):
            return schema
    raise CurpError(
        f"unsupported response_format {response_format!r}; use "
        "{'type': 'json_schema', 'json_schema': {'schema': ...}} or {'type': 'json_object'}"
    )


def tool_decoding(kwargs: Mapping[str, Any]) -> ToolDecoding:
    """The decoding plan for a call's keyword arguments (tools, tool_choice, json_schema,
    response_format)."""
    response = kwargs.get("json_schema")
    if response is None:
        response = response_format_schema(kwargs.get("response_format"))
    specs = tool_specs(kwargs.get("tools") or ())
    if not specs:
        if kwargs.get("tool_choice") not in (None, False, "auto", "none"):
            raise CurpError(f"tool_choice {kwargs['tool_choice']!r} needs tools; none are bound")
        return ToolDecoding((), None, response, response, False)
    return plan(specs, resolve_tool_choice(kwargs.get("tool_choice"), specs), response)


def plan(
    specs: tuple[ToolSpec, ...], choice: ToolChoice, response: Mapping[str, Any] | None
) -> ToolDecoding:
    """The decoding plan for bound tools and a resolved choice."""
    if choice.mode == "none":
        return ToolDecoding(specs, choice, response, response, False, response is None)
    calls = call_schema(specs, choice.names)
    if choice.mode == "required":
        return ToolDecoding(specs, choice, None, calls, False)
    if response is not None:  # a call, or the final answer in the response format
        options = [*calls.get("anyOf", [calls]), dict(response)]
        return ToolDecoding(specs, choice, response, {"anyOf": options}, False)
    return ToolDecoding(specs, choice, None, calls, True)


def settle_auto(decoding: ToolDecoding, call: str | None) -> ToolDecoding:
    """ "auto" decided outside the LLM (``tool_gate``): a required call to ``call``, or, when
    it is None, text (in the response format, if one is set)."""
    if decoding.choice is None or decoding.choice.mode != "auto":
        return decoding
    choice = ToolChoice("none", ()) if call is None else ToolChoice("required", (call,))
    return plan(decoding.specs, choice, decoding.response_schema)
