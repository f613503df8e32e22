"""The parts of tool decoding that need no model: run-on detection, the smallest call a
budget must hold, the gate's bar for many tools, and the grammars handed to llguidance."""

from __future__ import annotations

import json

import pytest
from langchain_core.tools import tool

from curp_chain.chat.tools.gate import request_parts, tool_count_bar
from curp_chain.chat.tools.specs import smallest_call, tool_specs
from curp_chain.chat.tools.stream import RunOnCheck, ToolCallAssembler
from curp_chain.errors import InvalidGenerationParamsError
from curp_chain.interfaces.protocols import GenerationParams
from curp_chain_integrations.backends.hf_constraints import (
    check_grammar,
    closed_objects,
    constraint_grammar,
)


def run_on(text: str) -> str | None:
    check = RunOnCheck()
    for char in text:  # one character at a time, as a stream may cut it
        if check.feed(char):
            break
    return check.reason


def test_arrays_that_count_or_repeat_and_repeated_characters_are_run_ons() -> None:
    counting = '{"order_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12'
    assert "counting up by 1" in (run_on(counting) or "")
    assert "counting down by 5" in (run_on('{"a": [40, 35, 30, 25, 20, 15, 10, 5, 0, ') or "")
    assert "repeated" in (run_on('{"a": [' + '{"x": 1}, ' * 9) or "")
    assert "repeated over 32" in (run_on('{"city": "P' + "a" * 40) or "")
    # n-gram blocking makes a small model vary the separators instead of repeating tokens.
    zone = '{"zone": "US_Central_India_2023_12_20_2018_12.20.18.2019_12-20-2019_12/20'
    assert "repeating '12 20' 3 times" in (run_on(zone) or "")


def test_ordinary_arguments_are_not_run_ons() -> None:
    assert run_on('{"order_ids": [1, 2, 3, 4, 5, 6, 7, 8]}') is None  # 8 items then the end
    assert run_on('{"ids": [3, 17, 4, 99, 12, 5, 8, 21, 40, 2, 7]}') is None
    assert run_on('{"text": "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]"}') is None  # in a string
    assert (
        run_on('{"names": ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy"]}') is None
    )
    assert run_on('{"body": "Dear Ann, thanks for the lovely evening and the cake."}') is None
    assert run_on('{"dates": "2024-12-20 to 2024-12-27", "where": "Paris, France"}') is None


def test_a_run_on_call_becomes_an_invalid_call_that_says_why() -> None:
    assembler = ToolCallAssembler(["lookup_orders"], json_only=True)
    pieces = ['{"name": "lookup_orders", "arguments": {"order_ids": [', "1, ", "2, ", "3, "]
    pieces += ["4, ", "5, ", "6, ", "7, ", "8, ", "9, ", "10, "]
    for piece in pieces:
        assert assembler.feed(piece, tokens=2) == ""
        if assembler.run_on:
            break
    result = assembler.finish("", "stop")
    assert not result.tool_call_chunks and len(result.invalid_tool_calls) == 1
    invalid = result.invalid_tool_calls[0]
    assert invalid["name"] == "lookup_orders" and invalid["error"] == result.error
    assert result.error and "ran on" in result.error and "after 18 tokens" in result.error


def test_the_smallest_call_holds_only_what_the_schema_requires() -> None:
    @tool
    def book(city: str, nights: int, breakfast: bool = False) -> str:
        """Book a room."""
        return "ok"

    call = json.loads(smallest_call(tool_specs([book])[0]))
    assert call == {"name": "book", "arguments": {"city": "", "nights": 0}}


def test_the_bar_rises_with_the_number_of_tools() -> None:
    assert tool_count_bar(1) == 0.0
    bars = [tool_count_bar(n) for n in (2, 5, 20, 100)]
    assert bars == sorted(bars) and 0.5 < bars[0] < 0.6 and 1.8 < bars[2] < 2.0


def test_objects_take_only_their_listed_properties_unless_told_otherwise() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}},
        "$defs": {"C": {"type": "object", "properties": {"c": {"type": "integer"}}}},
        "anyOf": [{"type": "object", "properties": {}, "additionalProperties": True}],
    }
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert closed["$defs"]["C"]["additionalProperties"] is False
    assert closed["anyOf"][0]["additionalProperties"] is True
    assert "additionalProperties" not in schema  # the caller's schema is left as it was


@pytest.mark.parametrize(
    "params",
    [
        GenerationParams(json_schema={"type": "object"}),
        GenerationParams(json_schema={"type": "object", "properties": {"x": {"enum": [1, 2]}}}),
        GenerationParams(json_schema={"type": "object"}, json_or_text=True),
        GenerationParams(no_json_start=True),
    ],
)
def test_each_constraint_is_a_grammar_llguidance_compiles(params: GenerationParams) -> None:
    grammar = constraint_grammar(params)
    assert grammar is not None and grammar.startswith("start:")
    check_grammar(grammar)


def test_a_reply_without_constraints_has_no_grammar_and_a_bad_schema_is_refused() -> None:
    assert constraint_grammar(GenerationParams()) is None
    grammar = constraint_grammar(GenerationParams(json_schema={"type": "nonsense"}))
    assert grammar is not None
    with pytest.raises(InvalidGenerationParamsError, match="cannot be turned into a grammar"):
        check_grammar(grammar)


def test_a_request_of_several_sentences_is_also_scored_sentence_by_sentence() -> None:
    request = "What is the weather in Lyon? Then add a reminder for my plan."
    assert request_parts(request) == [
        request,
        "What is the weather in Lyon?",
        "Then add a reminder for my plan.",
    ]
    assert request_parts("What time is it in Tokyo?") == ["What time is it in Tokyo?"]
