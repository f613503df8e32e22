"""Streamed reply text -> content or tool calls.

A reply decoded with tools bound is either plain text (streamed as content as it comes)
or one JSON object (held back until the reply ends, then parsed once): a call
``{"name": <bound tool>, "arguments": {...}}`` becomes a tool call; any other object (a
reply in a requested response format) becomes the content. A call cut short by
``max_tokens`` becomes an invalid tool call, not an exception. Its ``args`` hold the reply
text as a JSON string: LangChain completes partial JSON when it merges streamed chunks, and
would otherwise turn a truncated call into a valid one with truncated arguments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCallChunk
from langchain_core.messages.tool import invalid_tool_call, tool_call_chunk

from curp_chain.chat.tools.specs import new_call_id


@dataclass
class ToolCallResult:
    """What the end of a reply adds to the last chunk."""

    content: str = ""
    tool_call_chunks: list[ToolCallChunk] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)
    error: str | None = None
    """Why the call is invalid (LangChain drops the invalid call's error when merging)."""


class ToolCallAssembler:
    """Per request: decides from the first character whether the reply is JSON, holds JSON
    back, and turns it into a tool call at the end."""

    def __init__(self, tool_names: Sequence[str], *, json_only: bool):
        self.tool_names = tuple(tool_names)
        self.json_only = json_only
        self.is_json: bool | None = True if json_only else None
        self.buffer = ""

    def feed(self, text: str) -> str:
        """The content to stream now for a piece of reply text."""
        if self.is_json is None and text:
            self.is_json = text.startswith("{")
        if self.is_json:
            self.buffer += text
            return ""
        return text

    def finish(self, text: str, finish_reason: str) -> ToolCallResult:
        """The last piece: flush held-back JSON as a tool call, content or an invalid call."""
        content = self.feed(text)
        if not self.is_json or not self.buffer:
            return ToolCallResult(content=content)
        raw = self.buffer
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            reason = (
                "the reply was cut short by max_tokens before the call was complete"
                if finish_reason == "length"
                else f"the reply is not valid JSON: {error}"
            )
            return ToolCallResult(invalid_tool_calls=[self._invalid(raw, reason)], error=reason)
        if self._is_call(value):
            arguments = json.dumps(value["arguments"], ensure_ascii=False)
            chunk = tool_call_chunk(name=value["name"], args=arguments, id=new_call_id(), index=0)
            return ToolCallResult(tool_call_chunks=[chunk])
        return ToolCallResult(content=raw)

    def _is_call(self, value: Any) -> bool:
        return (
            isinstance(value, dict)
            and set(value) == {"name", "arguments"}
            and value["name"] in self.tool_names
            and isinstance(value["arguments"], dict)
        )

    def _invalid(self, raw: str, reason: str) -> InvalidToolCall:
        found = re.search(r'"name"\s*:\s*"([^"]*)"', raw)
        name = found.group(1) if found and found.group(1) in self.tool_names else None
        if name is None and len(self.tool_names) == 1:  # the grammar allowed no other
            name = self.tool_names[0]
        quoted = json.dumps(raw, ensure_ascii=False)
        return invalid_tool_call(name=name, args=quoted, id=new_call_id(), error=reason)
