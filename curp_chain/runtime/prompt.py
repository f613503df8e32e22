"""The one prompt builder: chat messages + soft tokens -> a chat-templated SoftPrompt.

Training and serving both call `build_soft_prompt`, so the soft tokens sit at exactly
the same place in the prompt the projector was trained with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from curp_chain.errors import CurpError
from curp_chain.interfaces.protocols import SoftPrompt, SoftVectors

Role = Literal["system", "user", "assistant", "tool"]

SOFT_MARKER = "\ue000curp-soft\ue000"
"""Stands for the soft tokens while the template renders; private-use characters, so user
text cannot contain it by accident (and any copy in user text is removed)."""


@dataclass(frozen=True)
class ToolCallTurn:
    """A tool call made in an earlier assistant turn."""

    name: str
    arguments: Mapping[str, Any]
    id: str | None = None


@dataclass(frozen=True)
class ChatTurn:
    role: Role
    content: str
    tool_calls: tuple[ToolCallTurn, ...] = field(default=())
    """Assistant turns: the tool calls the turn made."""
    tool_call_id: str | None = None
    """Tool turns: the call this result answers."""
    name: str | None = None
    """Tool turns: the tool that produced the result."""


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    # transformers' tojson: plain JSON, no HTML escaping (Jinja2's own escapes < > & ').
    return json.dumps(value, ensure_ascii=False, indent=indent)


def template_supports_tools(template: str) -> bool:
    """Whether a chat template renders a ``tools`` list (Qwen2.5 and Llama 3 templates do,
    SmolLM2's does not)."""
    return "tools" in template


def _message(turn: ChatTurn) -> dict[str, Any]:
    """A turn in the shape Hugging Face chat templates read."""
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.tool_calls:
        message["tool_calls"] = [
            {
                "type": "function",
                "id": call.id,
                "function": {"name": call.name, "arguments": dict(call.arguments)},
            }
            for call in turn.tool_calls
        ]
    if turn.tool_call_id is not None:
        message["tool_call_id"] = turn.tool_call_id
    if turn.name is not None:
        message["name"] = turn.name
    return message


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    # The same environment settings transformers uses for apply_chat_template.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.filters["tojson"] = _tojson
    return env.from_string(template)


def render_chat(
    template: str,
    turns: Sequence[ChatTurn],
    special_tokens: Mapping[str, str],
    *,
    add_generation_prompt: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Render ``turns`` (and ``tools``, OpenAI-style, for a template that reads them)."""
    extra = {"tools": [dict(t) for t in tools]} if tools else {}
    try:
        return str(
            _compile(template).render(
                messages=[_message(t) for t in turns],
                add_generation_prompt=add_generation_prompt,
                bos_token=special_tokens.get("bos_token", ""),
                eos_token=special_tokens.get("eos_token", ""),
                **extra,
            )
        )
    except TemplateError as error:
        raise CurpError(f"the model's chat template rejected the messages: {error}") from None


def build_soft_prompt(
    template: str,
    turns: Sequence[ChatTurn],
    soft: SoftVectors | None,
    special_tokens: Mapping[str, str],
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> SoftPrompt:
    """Render ``turns`` and splice ``soft`` at the start of the last user turn's content.

    The last user turn is where the request is; the soft tokens precede its text, on a line
    of their own. Everything after them (the request and the assistant header) stays text,
    so a soft token is never the last position of the prompt.
    """
    clean = [replace(t, content=t.content.replace(SOFT_MARKER, "")) for t in turns]
    if soft is None or len(soft) == 0:
        return SoftPrompt(render_chat(template, clean, special_tokens, tools=tools), None, "")
    last_user = max((i for i, t in enumerate(clean) if t.role == "user"), default=None)
    if last_user is None:
        raise CurpError("a personalized prompt needs at least one user (human) message")
    marked = list(clean)
    marked[last_user] = ChatTurn("user", SOFT_MARKER + "\n" + clean[last_user].content)
    text = render_chat(template, marked, special_tokens, tools=tools)
    before, found, after = text.partition(SOFT_MARKER)
    if not found or SOFT_MARKER in after:
        raise CurpError("the chat template did not keep the user message intact")
    return SoftPrompt(before, soft, after)
