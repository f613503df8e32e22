"""Tools in the prompt of a template without a place for them: one signature line per tool,
and call ids only where a tool's name does not tell its results apart."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from curp_chain.chat.tools.prompt import inline_tools, tools_system_text
from curp_chain.chat.tools.signature import tool_signature
from curp_chain.chat.tools.specs import ToolChoice, to_tool_spec
from curp_chain.runtime.prompt import ChatTurn, ToolCallTurn


class Window(BaseModel):
    start: int
    end: int | None = None


class Search(BaseModel):
    """Search the catalogue."""

    query: str = Field(description="words to look for", max_length=40)
    kinds: list[Literal["book", "film"]] = ["book"]
    limit: int = 5
    window: Window | None = None


def test_a_signature_names_types_optional_parameters_defaults_and_descriptions() -> None:
    line = tool_signature(to_tool_spec(Search))
    assert line == (
        'Search(query: string, kinds?: ("book" | "film")[] = ["book"], limit?: integer = 5, '
        "window?: {start: integer, end?: integer | null = null} | null = null): "
        "Search the catalogue. query: words to look for."
    )
    assert "maxLength" not in line  # the grammar enforces it; the line stays short


def test_the_system_text_lists_only_the_tools_a_forced_call_may_name() -> None:
    specs = [to_tool_spec(Search), to_tool_spec(Window)]
    text = tools_system_text(specs, ToolChoice("required", ("Window",)))
    assert "Window(start: integer" in text and "Search(" not in text


def call_turns(names: list[str]) -> list[ChatTurn]:
    calls = tuple(ToolCallTurn(n, {"q": i}, f"call_{i}") for i, n in enumerate(names))
    results = [
        ChatTurn("tool", f"result {i}", name=n, tool_call_id=f"call_{i}")
        for i, n in enumerate(names)
    ]
    return [ChatTurn("user", "go"), ChatTurn("assistant", "", tool_calls=calls), *results]


def test_ids_are_shown_only_for_a_tool_called_twice_in_one_turn() -> None:
    text = "\n".join(t.content for t in inline_tools(call_turns(["a", "b"]), [], None))
    assert "call_" not in text
    assert "a returned: result 0" in text and '{"name": "b", "arguments": {"q": 1}}' in text
    text = "\n".join(t.content for t in inline_tools(call_turns(["a", "a", "b"]), [], None))
    assert '"id": "call_0"' in text and "a (call call_1) returned: result 1" in text
    assert "b returned: result 2" in text  # b's single call still needs no id


def test_a_boolean_property_schema_reads_as_any() -> None:
    spec = to_tool_spec(
        {
            "type": "function",
            "function": {
                "name": "tag",
                "description": "Tag a note.",
                "parameters": {"type": "object", "properties": {"note": True}},
            },
        }
    )
    assert tool_signature(spec) == "tag(note?: any): Tag a note."
