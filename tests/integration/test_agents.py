"""CurpChatModel in LangChain agents and LangGraph graphs, and the user id from a config."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from langchain.agents import create_agent
from langchain.agents.structured_output import ProviderStrategy, ToolStrategy
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from pydantic import BaseModel

from curp_chain import CurpChatModel
from curp_chain.errors import CurpError
from curp_chain_integrations.langchain.agents import CurpUserMiddleware, context_user_id

HISTORY = ["Sunrise trail run: 18 km.", "Marathon week 12, long run 32 km."]


@tool
def add_numbers(a: int, b: int) -> int:
    """Add two integers and return the sum."""
    return a + b


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"Sunny in {city}."


class Plan(BaseModel):
    activity: str
    hours: int


@dataclass
class UserContext:
    user_id: str


@pytest.fixture
def model(llama_backend, memory_store) -> CurpChatModel:
    model = CurpChatModel(backend=llama_backend, history_store=memory_store, max_tokens=32)
    model.add_history("alice", HISTORY)
    return model


def curp(message: AIMessage) -> dict:
    return message.response_metadata["curp"]


def test_configurable_user_id_is_used_by_every_entry_point(model: CurpChatModel) -> None:
    config: RunnableConfig = {"configurable": {"user_id": "alice"}}
    assert curp(model.invoke("Plans?", config=config))["user_id"] == "alice"
    assert curp(model.invoke("Plans?", config=config))["personalized"] is True
    last = list(model.stream("Plans?", config=config))[-1]
    assert curp(last)["user_id"] == "alice"
    replies = model.batch(
        ["Plans?", "Plans?"], config=[config, {"configurable": {"user_id": "bob"}}]
    )
    assert [curp(r)["user_id"] for r in replies] == ["alice", "bob"]
    assert curp(replies[1])["reason"] == "user has no history"
    # A user id passed as a keyword or bound wins over the config.
    assert curp(model.invoke("Plans?", config=config, user_id="bob"))["user_id"] == "bob"
    assert curp(model.bind(user_id="bob").invoke("Plans?", config=config))["user_id"] == "bob"

    # Inside a chain the step's config carries it.
    def as_messages(text: str) -> list[HumanMessage]:
        return [HumanMessage(text)]

    chain = RunnableLambda(as_messages) | model
    assert curp(chain.invoke("Plans?", config=config))["user_id"] == "alice"


async def test_configurable_user_id_in_async_calls(model: CurpChatModel) -> None:
    config: RunnableConfig = {"configurable": {"user_id": "alice"}}
    assert curp(await model.ainvoke("Plans?", config=config))["personalized"] is True
    chunks = [chunk async for chunk in model.astream("Plans?", config=config)]
    assert curp(chunks[-1])["user_id"] == "alice"


def test_a_bad_configurable_user_id_is_refused(model: CurpChatModel) -> None:
    with pytest.raises(CurpError):
        model.invoke("Plans?", config={"configurable": {"user_id": ""}})


def test_context_user_id_reads_dicts_dataclasses_and_models() -> None:
    class Context(BaseModel):
        user_id: str

    assert context_user_id({"user_id": "a"}) == "a"
    assert context_user_id(UserContext("b")) == "b"
    assert context_user_id(Context(user_id="c")) == "c"
    assert context_user_id(None) is None and context_user_id({}) is None
    with pytest.raises(CurpError, match="must be a string"):
        context_user_id({"user_id": 3})


def test_create_agent_calls_tools_for_the_user_in_its_context(model: CurpChatModel) -> None:
    agent = create_agent(
        model,
        tools=[add_numbers, get_weather],
        context_schema=UserContext,
        middleware=[CurpUserMiddleware()],
    )
    first = model.bind_tools([add_numbers, get_weather], tool_choice="add_numbers")
    assert first.invoke("What is 17 plus 25?").tool_calls  # the grammar forces a call
    result = agent.invoke(
        {"messages": [HumanMessage("What is 17 plus 25? Use add_numbers.")]},
        context=UserContext(user_id="alice"),
    )
    replies = [m for m in result["messages"] if isinstance(m, AIMessage)]
    assert replies and all(curp(m)["user_id"] == "alice" for m in replies)
    assert all(curp(m)["personalized"] for m in replies)
    for message in replies:
        for call in message.tool_calls:
            assert call["name"] in ("add_numbers", "get_weather")


def test_create_agent_with_auto_calls_the_tool_once_then_answers(model: CurpChatModel) -> None:
    agent = create_agent(
        model,
        tools=[add_numbers, get_weather],  # tool_choice "auto": the model decides
        context_schema=UserContext,
        middleware=[CurpUserMiddleware()],
    )
    result = agent.invoke(
        {"messages": [HumanMessage("What is the weather in Paris right now?")]},
        context=UserContext(user_id="alice"),
    )
    replies = [m for m in result["messages"] if isinstance(m, AIMessage)]
    assert len(replies) == 2, result["messages"]
    (call,) = replies[0].tool_calls
    assert call["name"] == "get_weather"
    schema = get_weather.args_schema  # the Pydantic model @tool made from the parameters
    assert isinstance(schema, type) and issubclass(schema, BaseModel)
    arguments = schema.model_validate(call["args"]).model_dump()
    assert arguments["city"].strip()
    (result_message,) = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert isinstance(result_message.content, str)
    assert result_message.content.startswith("Sunny in")
    final = replies[1]
    assert not final.tool_calls and not final.invalid_tool_calls
    assert isinstance(final.content, str) and final.content.strip()
    assert final.response_metadata["tool_gate"]["call"] is None


def test_the_middleware_can_require_a_user(model: CurpChatModel) -> None:
    agent = create_agent(model, tools=[add_numbers], middleware=[CurpUserMiddleware(required=True)])
    with pytest.raises(CurpError, match="no 'user_id'"):
        agent.invoke({"messages": [HumanMessage("Hi")]})


@pytest.mark.parametrize("strategy", [ToolStrategy(Plan), ProviderStrategy(Plan), Plan])
def test_create_agent_response_format(
    model: CurpChatModel, strategy: ToolStrategy[Plan] | ProviderStrategy[Plan] | type[Plan]
) -> None:
    agent = create_agent(
        model.model_copy(update={"max_tokens": 64}),
        tools=[],
        response_format=strategy,
        context_schema=UserContext,
        middleware=[CurpUserMiddleware()],
    )
    result = agent.invoke(
        {"messages": [HumanMessage("Suggest one activity for Saturday and its hours.")]},
        context=UserContext(user_id="alice"),
    )
    assert isinstance(result["structured_response"], Plan)


def test_a_langgraph_node_takes_the_user_from_its_config(model: CurpChatModel) -> None:
    def respond(state: MessagesState) -> dict:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("respond", respond)
    graph.add_edge(START, "respond")
    graph.add_edge("respond", END)
    app = graph.compile()
    result = app.invoke(
        {"messages": [HumanMessage("Plans for Saturday?")]},
        config={"configurable": {"user_id": "alice"}},
    )
    assert curp(result["messages"][-1])["user_id"] == "alice"
    assert curp(result["messages"][-1])["personalized"] is True
