"""Tool calling: bind_tools, every tool_choice, streamed and not, on the real SmolLM2 through
llama.cpp and through transformers (llguidance grammars), calls that run on or do not fit
the budget, the relevance gate as tools are added, and the prompt an agent's earlier calls
and results make."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal
from unittest.mock import patch

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolCall, ToolMessage
from langchain_core.tools import BaseTool, tool
from pydantic import BaseModel, Field

from curp_chain import CurpChatModel
from curp_chain.chat.tools import gate
from curp_chain.chat.tools.gate import decide
from curp_chain.chat.tools.specs import resolve_tool_choice, tool_specs
from curp_chain.errors import CurpError
from curp_chain.runtime.prompt import ChatTurn, ToolCallTurn, render_chat

HISTORY = ["Sunrise trail run: 18 km.", "Marathon week 12, long run 32 km."]


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="the city name")
    unit: Literal["celsius", "fahrenheit"]


@tool
def add_numbers(a: int, b: int) -> int:
    """Add two integers and return the sum."""
    return a + b


def book_table(restaurant: str, people: int) -> str:
    """Book a table at a restaurant for a number of people."""
    return f"booked {restaurant} for {people}"


TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "current_time",
        "description": "The current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
TOOLS: list[dict[str, Any] | type | Callable[..., Any] | BaseTool] = [
    GetWeather,
    add_numbers,
    book_table,
    TIME_TOOL,
]
ARGUMENT_MODELS = {
    "GetWeather": GetWeather,
    "add_numbers": add_numbers.args_schema,
}


@pytest.fixture(params=["llamacpp", "hf"])
def model(request: pytest.FixtureRequest, memory_store) -> CurpChatModel:
    """The same model on each local backend: llama.cpp, then transformers."""
    name = "llama_backend" if request.param == "llamacpp" else "hf_backend"
    backend = request.getfixturevalue(name)
    model = CurpChatModel(backend=backend, history_store=memory_store, max_tokens=48)
    model.add_history("runner", HISTORY)
    return model


def assert_valid_call(message: AIMessage, names: set[str]) -> ToolCall:
    assert len(message.tool_calls) == 1 and not message.invalid_tool_calls, message
    call = message.tool_calls[0]
    assert call["name"] in names
    assert call["id"] and call["id"].startswith("call_")
    schema = ARGUMENT_MODELS.get(call["name"])
    if schema is not None:
        assert isinstance(schema, type) and issubclass(schema, BaseModel)
        schema.model_validate(call["args"])
    if call["name"] == "add_numbers":
        assert all(isinstance(call["args"][k], int) for k in ("a", "b"))
    if call["name"] == "book_table":
        assert set(call["args"]) == {"restaurant", "people"}
        assert isinstance(call["args"]["people"], int)
    assert message.response_metadata["finish_reason"] == "tool_calls"
    return call


def merged(chunks: Sequence[AIMessage]) -> AIMessageChunk:
    # A bound model is a Runnable typed to give an AIMessage, so its stream is typed as one
    # too; what it yields are chunks.
    total = chunks[0]
    assert isinstance(total, AIMessageChunk)
    for chunk in chunks[1:]:
        assert isinstance(chunk, AIMessageChunk)
        total = total + chunk
    return total


def test_tool_choice_resolves_as_langchain_documents() -> None:
    specs = tool_specs(TOOLS)
    names = ("GetWeather", "add_numbers", "book_table", "current_time")
    assert [s.name for s in specs] == list(names)
    for choice in (None, False, "auto"):
        assert resolve_tool_choice(choice, specs).mode == "auto"
    for choice in ("any", "required", True):
        assert resolve_tool_choice(choice, specs) == resolve_tool_choice("any", specs)
        assert resolve_tool_choice(choice, specs).names == names
    assert resolve_tool_choice("none", specs).mode == "none"
    by_dict = {"type": "function", "function": {"name": "add_numbers"}}
    assert resolve_tool_choice(by_dict, specs).names == ("add_numbers",)
    assert resolve_tool_choice("book_table", specs).names == ("book_table",)
    with pytest.raises(CurpError, match="'send_email', which is not among the tools"):
        resolve_tool_choice("send_email", specs)
    with pytest.raises(CurpError, match="unknown tool_choice"):
        resolve_tool_choice(3, specs)


def test_bind_tools_refuses_bad_input_clearly(model: CurpChatModel) -> None:
    with pytest.raises(CurpError, match="not among the tools"):
        model.bind_tools(TOOLS, tool_choice="send_email")
    with pytest.raises(CurpError, match="cannot use 42 as a tool"):
        model.bind_tools([42])  # type: ignore[list-item]  # not a tool, on purpose
    other_get_weather = {
        "type": "function",
        "function": {
            "name": "GetWeather",
            "parameters": {"type": "object", "properties": {"zip": {"type": "integer"}}},
        },
    }
    with pytest.raises(CurpError, match="share the name"):
        model.bind_tools([GetWeather, other_get_weather])
    assert model.bind_tools([GetWeather, GetWeather.model_json_schema()])  # one tool, twice
    with pytest.raises(CurpError, match="needs tools"):
        model.invoke("hi", tool_choice="any")


@pytest.mark.parametrize(
    "choice",
    [
        "any",
        "required",
        True,
        "add_numbers",
        {"type": "function", "function": {"name": "book_table"}},
    ],
)
def test_a_forced_call_validates_against_its_schema(
    model: CurpChatModel, choice: str | bool | dict[str, Any]
) -> None:
    bound = model.bind_tools(TOOLS, tool_choice=choice)
    message = bound.invoke("What is 17 plus 25?", user_id="runner")
    expected = {"add_numbers"} if choice == "add_numbers" else None
    if isinstance(choice, dict):
        expected = {"book_table"}
    call = assert_valid_call(message, expected or {s.name for s in tool_specs(TOOLS)})
    assert message.content == ""
    assert message.response_metadata["curp"]["personalized"] is True
    streamed = merged(list(bound.stream("What is 17 plus 25?", user_id="runner")))
    assert streamed.tool_call_chunks and streamed.tool_calls[0]["name"] == call["name"]
    assert streamed.tool_calls[0]["args"] == call["args"]


def test_any_calls_the_tool_the_encoder_ranks_first_and_lists_only_it(
    model: CurpChatModel,
) -> None:
    request = "What time is it in Tokyo right now?"
    bound = model.bind_tools(TOOLS, tool_choice="any")
    prepared = model._prepare([HumanMessage(request)], None, {"tools": TOOLS, "tool_choice": "any"})
    system = prepared.prompt.before
    assert "current_time(zone: string)" in system and "add_numbers(" not in system
    message = bound.invoke(request)
    assert_valid_call(message, {"current_time"})
    gate = message.response_metadata["tool_gate"]
    assert gate["call"] == "current_time" and 'tool_choice "any"' in gate["reason"]
    by_llm = model.model_copy(update={"encoder_picks_forced_tool": False})
    prepared = by_llm._prepare(
        [HumanMessage(request)], None, {"tools": TOOLS, "tool_choice": "any"}
    )
    assert "add_numbers(" in prepared.prompt.before  # every tool listed: the LLM picks
    assert (
        "tool_gate"
        not in by_llm.bind_tools(TOOLS, tool_choice="any").invoke(request).response_metadata
    )


def test_enums_and_required_fields_hold_in_a_call(model: CurpChatModel) -> None:
    bound = model.bind_tools([GetWeather], tool_choice="GetWeather")
    call = assert_valid_call(bound.invoke("Weather in Paris, in celsius?"), {"GetWeather"})
    assert call["args"]["unit"] in ("celsius", "fahrenheit") and call["args"]["city"]


def test_auto_chooses_between_a_call_and_text(model: CurpChatModel) -> None:
    bound = model.bind_tools(TOOLS)
    cases = (("What is 17 plus 25? Use the add_numbers tool.", "add_numbers"), ("Say hello.", None))
    for question, expected in cases:
        message = bound.invoke(question)
        gate = message.response_metadata["tool_gate"]
        assert gate["call"] == expected and set(gate["scores"]) == {
            s.name for s in tool_specs(TOOLS)
        }
        if expected is not None:
            assert assert_valid_call(message, {expected})["name"] == expected
            assert message.content == ""
        else:
            assert isinstance(message.content, str) and message.content
            assert not message.content.startswith("{") and not message.invalid_tool_calls
            assert not message.tool_calls
        streamed = merged(list(bound.stream(question)))
        assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [
            (c["name"], c["args"]) for c in message.tool_calls
        ]
        assert streamed.content == message.content


def test_auto_answers_in_text_once_the_tool_was_called(model: CurpChatModel) -> None:
    bound = model.bind_tools([add_numbers])
    question = HumanMessage("What is 17 plus 25?")
    call = bound.invoke([question])
    assert assert_valid_call(call, {"add_numbers"})
    result = add_numbers.invoke(call.tool_calls[0])
    answer = bound.invoke([question, call, result])
    assert not answer.tool_calls and not answer.invalid_tool_calls
    assert isinstance(answer.content, str) and answer.content.strip()
    assert answer.response_metadata["tool_gate"]["call"] is None
    assert "already called" in answer.response_metadata["tool_gate"]["reason"]


def test_the_threshold_bounds_auto(model: CurpChatModel) -> None:
    question = "What is 17 plus 25?"
    never = model.model_copy(update={"auto_tool_threshold": 1.0}).bind_tools([add_numbers])
    assert not never.invoke(question).tool_calls
    # The threshold alone (no calibration against everyday requests) at -1 always calls.
    update = {"auto_tool_threshold": -1.0, "auto_tool_calibrated": False}
    always = model.model_copy(update=update).bind_tools([book_table])
    assert assert_valid_call(always.invoke(question), {"book_table"})


def test_the_gate_offers_each_tool_once_per_request(encoder) -> None:
    specs = tool_specs(TOOLS)
    asked = [ChatTurn("user", "Book a table for four at Chez Anna.")]
    first = decide(asked, specs, encoder.encode, 0.24)
    assert first.call == "book_table" and first.scores["book_table"] == max(first.scores.values())
    called = ToolCallTurn("book_table", {"restaurant": "Chez Anna", "people": 4}, "call_1")
    answered = [
        *asked,
        ChatTurn("assistant", "", tool_calls=(called,)),
        ChatTurn("tool", "booked", tool_call_id="call_1", name="book_table"),
    ]
    again = decide(answered, specs, encoder.encode, 0.24)
    assert again.call != "book_table" and "book_table" not in again.scores
    # A new request offers every tool again.
    new = decide([*answered, ChatTurn("user", "Say hello.")], specs, encoder.encode, 0.24)
    assert new.call is None and set(new.scores) == {s.name for s in specs}
    assert decide([ChatTurn("system", "Hi")], specs, encoder.encode, 0.24).call is None


MORE_TOOLS = json.loads(
    (Path(__file__).parents[2] / "benchmarks" / "tool_requests.json").read_text()
)["more_tools"]


def test_the_gate_stays_calibrated_as_tools_are_added(encoder) -> None:
    many = tool_specs([*TOOLS, *({"type": "function", "function": t} for t in MORE_TOOLS)])
    assert len(many) == 21
    chat = [ChatTurn("user", "Recommend a good fantasy novel.")]
    # The best of 21 similarities passes the plain threshold (book_hotel, about 0.34) ...
    assert decide(chat, many, encoder.encode, 0.24, calibrated=False).call is not None
    # ... but not the bar for 21 tools, nor the "no tool" alternatives.
    decision = decide(chat, many, encoder.encode, 0.24)
    assert decision.call is None and "21 tools" in decision.reason
    for question, tool_name in (
        ("Book a table for four at Chez Anna.", "book_table"),
        ("What is 17 plus 25?", "add_numbers"),
    ):
        assert decide([ChatTurn("user", question)], many, encoder.encode, 0.24).call == tool_name


def test_a_request_like_everyday_ones_gets_no_call_from_many_tools(encoder) -> None:
    many = tool_specs([*TOOLS, *({"type": "function", "function": t} for t in MORE_TOOLS)])
    chat = [ChatTurn("user", "What's a good way to get my home ready for winter?")]
    # set_thermostat stands out enough among 21 tools and beats the "no tool" intents ...
    with patch.object(gate, "EVERYDAY_NEIGHBOURS", 0):
        assert decide(chat, many, encoder.encode, 0.24).call == "set_thermostat"
    # ... but the request is far closer to everyday requests about the home.
    decision = decide(chat, many, encoder.encode, 0.24)
    assert decision.call is None and "reads like everyday requests" in decision.reason
    # A request that needs the tool is not like them.
    asked = [ChatTurn("user", "Set the thermostat in the living room to 21 degrees.")]
    assert decide(asked, many, encoder.encode, 0.24).call == "set_thermostat"


def test_tool_choice_none_replies_in_text(model: CurpChatModel) -> None:
    message = model.bind_tools(TOOLS, tool_choice="none").invoke("What is 17 plus 25?")
    assert not message.tool_calls and not message.invalid_tool_calls
    assert isinstance(message.content, str) and message.content
    assert not message.content.startswith("{")


def test_a_call_cut_short_is_an_invalid_tool_call(model: CurpChatModel) -> None:
    bound = model.bind_tools(TOOLS, tool_choice="book_table")
    message = bound.invoke("Book a table for four at Chez Anna.", max_tokens=6)
    assert message.tool_calls == [] and len(message.invalid_tool_calls) == 1
    invalid = message.invalid_tool_calls[0]
    assert invalid["name"] == "book_table"
    assert json.loads(invalid["args"] or "").replace(" ", "").startswith('{"name":"book')
    assert "cut short" in message.response_metadata["tool_call_error"]
    assert invalid["error"] == message.response_metadata["tool_call_error"]
    assert message.response_metadata["finish_reason"] == "length"
    streamed = merged(list(bound.stream("Book a table for four at Chez Anna.", max_tokens=6)))
    assert streamed.tool_calls == [] and streamed.invalid_tool_calls


def lookup_orders(order_ids: list[int]) -> str:
    """Look up the status of customer orders by their ids."""
    return "shipped"


def test_a_forced_call_whose_arguments_run_on_stops_early_with_a_reason(
    model: CurpChatModel,
) -> None:
    # A forced call that fits nothing in the request: SmolLM2 counts order ids 1, 2, 3, ...
    bound = model.bind_tools([lookup_orders], tool_choice="lookup_orders")
    question = "How much is 40 dollars in yen?"
    message = bound.invoke(question, max_tokens=200)
    assert message.tool_calls == [] and len(message.invalid_tool_calls) == 1
    error = message.invalid_tool_calls[0]["error"]
    assert error and "ran on" in error and "counting up" in error
    assert message.usage_metadata is not None
    assert 8 < message.usage_metadata["output_tokens"] < 60  # stopped, not run to 200
    assert message.response_metadata["finish_reason"] == "stop"
    chunks = list(bound.stream(question, max_tokens=200))
    last = chunks[-1]
    assert isinstance(last, AIMessageChunk) and last.invalid_tool_calls[0]["error"] == error
    assert merged(chunks).invalid_tool_calls


def test_auto_replies_in_text_when_the_budget_cannot_hold_a_call(model: CurpChatModel) -> None:
    bound = model.bind_tools(TOOLS)
    message = bound.invoke("What is 17 plus 25? Use the add_numbers tool.", max_tokens=8)
    gate = message.response_metadata["tool_gate"]
    assert gate["call"] is None and "max_tokens is 8" in gate["reason"]
    assert not message.tool_calls and not message.invalid_tool_calls
    assert isinstance(message.content, str) and message.content.strip()


def test_earlier_calls_and_results_reach_the_prompt(model: CurpChatModel) -> None:
    messages = [
        HumanMessage("What is 17 plus 25?"),
        AIMessage(
            "", tool_calls=[{"name": "add_numbers", "args": {"a": 17, "b": 25}, "id": "call_1"}]
        ),
        ToolMessage("42", tool_call_id="call_1"),
    ]
    request = model._prepare(messages, None, {"tools": [TIME_TOOL], "tool_choice": "any"})
    text = request.prompt.before + request.prompt.after
    assert '{"name": "add_numbers", "arguments": {"a": 17, "b": 25}}' in text
    assert "<|im_start|>tool\nadd_numbers returned: 42<|im_end|>" in text
    assert "call_1" not in text  # one call per tool: the name tells the result apart
    assert "current_time(zone: string)" in text  # the bound tool, in the system message
    reply = model.bind_tools(TOOLS).invoke(messages)
    assert reply.content or reply.tool_calls


QWEN_LIKE = (
    "{% if tools %}<|im_start|>system\n# Tools\n{% for t in tools %}{{ t | tojson }}\n"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }} "
    "{{ c.function.arguments | tojson }}</tool_call>{% endfor %}"
    "{% if m.tool_call_id %}[{{ m.tool_call_id }}]{% endif %}<|im_end|>\n{% endfor %}"
)


def test_a_template_that_reads_tools_gets_them_in_its_own_format() -> None:
    turns = [
        ChatTurn("user", "17 + 25?"),
        ChatTurn("assistant", "", tool_calls=(ToolCallTurn("add_numbers", {"a": 17}, "c1"),)),
        ChatTurn("tool", "42", tool_call_id="c1", name="add_numbers"),
    ]
    tools = [spec.as_openai() for spec in tool_specs([TIME_TOOL])]
    text = render_chat(QWEN_LIKE, turns, {}, tools=tools)
    assert json.dumps(tools[0]) in text
    assert '<tool_call>add_numbers {"a": 17}</tool_call>' in text
    assert "42[c1]" in text
