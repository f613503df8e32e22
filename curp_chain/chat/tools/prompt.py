"""Tools in the prompt of a model whose chat template has no place for them (SmolLM2).

The format, chosen to match what the grammar lets the model write:

- the system message lists each tool as one signature line,
  ``name(param: type, ...): description`` (``curp_chain.chat.tools.signature``), and says
  how to call one: a reply that is only ``{"name": <tool>, "arguments": {...}}``;
- an earlier assistant turn that called tools shows each call as one JSON line
  ``{"name", "arguments"}`` after its text;
- a tool result is a ``tool`` turn reading ``<name> returned: <content>``.

A call's id (``"id"`` in its line, ``(call <id>)`` in its result) is shown only where the
tool's name does not tell the results apart: when one assistant turn calls the same tool
more than once. Ids are random strings of about 20 tokens each, and an agent's later calls
decode them again for every call of the turn.

Templates that read a ``tools`` list (Qwen2.5, Llama 3) get the tools and the calls in their
own format instead (see ``prompt.render_chat``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

from curp_chain.chat.tools.signature import tool_signature
from curp_chain.chat.tools.specs import ToolChoice, ToolSpec, arguments_json
from curp_chain.runtime.prompt import ChatTurn

HOW_TO_CALL = (
    'To call a tool, reply with only a JSON object: {"name": <tool name>, "arguments": '
    "<arguments object>}."
)


def tools_system_text(specs: Sequence[ToolSpec], choice: ToolChoice) -> str:
    lines = ["You can call these tools:"]
    for spec in specs:
        if choice.mode == "required" and spec.name not in choice.names:
            continue
        lines.append(tool_signature(spec))
    lines.append(HOW_TO_CALL)
    if choice.mode == "auto":
        lines.append("Call a tool only when it helps; otherwise reply in plain text.")
    return "\n".join(lines)


def ids_to_show(turns: Sequence[ChatTurn]) -> set[str]:
    """Ids of the calls whose assistant turn calls their tool more than once."""
    shown: set[str] = set()
    for turn in turns:
        repeated = {n for n, k in Counter(c.name for c in turn.tool_calls).items() if k > 1}
        shown.update(c.id for c in turn.tool_calls if c.name in repeated and c.id)
    return shown


def _assistant_text(turn: ChatTurn, shown: set[str]) -> str:
    calls = [
        f'{{"name": {json.dumps(c.name)}, "arguments": {arguments_json(c.arguments)}'
        + (f', "id": {json.dumps(c.id)}}}' if c.id in shown else "}")
        for c in turn.tool_calls
    ]
    return "\n".join(([turn.content] if turn.content else []) + calls)


def _tool_text(turn: ChatTurn, shown: set[str]) -> str:
    call = f" (call {turn.tool_call_id})" if turn.tool_call_id in shown else ""
    return f"{turn.name or 'the tool'}{call} returned: {turn.content}"


def inline_tools(
    turns: Sequence[ChatTurn], specs: Sequence[ToolSpec], choice: ToolChoice | None
) -> list[ChatTurn]:
    """``turns`` rewritten for a template that knows only role and content."""
    out = []
    shown = ids_to_show(turns)
    for turn in turns:
        if turn.role == "assistant" and turn.tool_calls:
            out.append(ChatTurn("assistant", _assistant_text(turn, shown)))
        elif turn.role == "tool":
            out.append(ChatTurn("tool", _tool_text(turn, shown)))
        else:
            out.append(ChatTurn(turn.role, turn.content))
    if specs and choice is not None:
        text = (
            tools_system_text(specs, choice)
            if choice.mode != "none"
            else "Reply in plain text, without calling a tool."
        )
        if out and out[0].role == "system":
            out[0] = ChatTurn("system", f"{out[0].content}\n\n{text}")
        else:
            out.insert(0, ChatTurn("system", text))
    return out
