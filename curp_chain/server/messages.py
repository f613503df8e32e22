"""OpenAI chat messages -> LangChain messages, and a request's generation settings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic import BaseModel

from curp_chain.server.errors import ApiError
from curp_chain.server.schemas import ChatCompletionRequest, Message


def to_langchain(messages: Sequence[Message]) -> list[BaseMessage]:
    """The request's messages as LangChain messages (``developer`` is a system message; an
    assistant's tool calls keep their ids so that tool results find them)."""
    converted: list[BaseMessage] = []
    for index, message in enumerate(messages):
        text = message.text()
        if message.role in ("system", "developer"):
            converted.append(SystemMessage(text))
        elif message.role == "user":
            converted.append(HumanMessage(text))
        elif message.role == "tool":
            converted.append(ToolMessage(text, tool_call_id=message.tool_call_id or ""))
        else:
            calls = [_tool_call(index, i, call) for i, call in enumerate(message.tool_calls or [])]
            converted.append(AIMessage(text, tool_calls=calls))
    return converted


def _tool_call(message: int, index: int, call: Any) -> dict[str, Any]:
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise ApiError(
            400,
            "a tool call's arguments must be a JSON object in a string",
            param=f"messages[{message}].tool_calls[{index}].function.arguments",
            code="invalid_value",
        )
    return {"name": call.function.name, "args": arguments, "id": call.id, "type": "tool_call"}


def max_tokens_of(body: ChatCompletionRequest, default: int, limit: int) -> int:
    """The reply's token budget: the request's (max_completion_tokens wins), else the
    server's default; above the server's limit is refused."""
    asked = body.max_completion_tokens or body.max_tokens
    if asked is not None and asked > limit:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise ApiError(
            400,
            f"{param} is {asked}; this server allows at most {limit} (--max-tokens-limit)",
            param=param,
            code="invalid_value",
        )
    return asked if asked is not None else min(default, limit)


def generation_kwargs(body: ChatCompletionRequest, max_tokens: int) -> dict[str, Any]:
    """The per-call keyword arguments of ``CurpChatModel`` that the request sets."""
    kwargs: dict[str, Any] = {"max_tokens": max_tokens}
    if body.temperature is not None:
        kwargs["temperature"] = body.temperature
    if body.top_p is not None:
        kwargs["top_p"] = body.top_p
    if body.seed is not None:
        kwargs["seed"] = body.seed
    if body.logprobs:
        kwargs["logprobs"] = True
        kwargs["top_logprobs"] = body.top_logprobs or 0
    if body.tools:
        kwargs["tools"] = [tool.model_dump(exclude_none=True) for tool in body.tools]
        choice = body.tool_choice
        kwargs["tool_choice"] = choice.model_dump() if isinstance(choice, BaseModel) else choice
    elif body.tool_choice not in (None, "none", "auto"):
        raise ApiError(400, "tool_choice needs tools", param="tool_choice", code="invalid_value")
    response_format = body.response_format
    if response_format is not None and response_format.type != "text":
        kwargs["response_format"] = response_format.model_dump(by_alias=True, exclude_none=True)
    return kwargs
