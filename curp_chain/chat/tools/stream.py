"""Streamed reply text -> content or tool calls.

A reply decoded with tools bound is either plain text (streamed as content as it comes)
or one JSON object (held back until the reply ends, then parsed once): a call
``{"name": <bound tool>, "arguments": {...}}`` becomes a tool call; any other object (a
reply in a requested response format) becomes the content. A call cut short by
``max_tokens`` becomes an invalid tool call, not an exception. Its ``args`` hold the reply
text as a JSON string: LangChain completes partial JSON when it merges streamed chunks, and
would otherwise turn a truncated call into a valid one with truncated arguments.

A call whose arguments run on (an array whose items repeat or count by a constant step, or
the same few characters over and over) is stopped as soon as that shows (`RunOnCheck`) and
reported as an invalid call with the reason, instead of decoding on until ``max_tokens``.
This reads the streamed text, so it works the same on every backend.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCallChunk
from langchain_core.messages.tool import invalid_tool_call, tool_call_chunk

from curp_chain.chat.tools.specs import new_call_id

RUN_ON_ITEMS = 8
"""Items in a row of one array that repeat, or count up or down by a constant step, after
which a call is stopped as a run-on (the 9th item is being written by then)."""
RUN_ON_CHARACTERS = 32
"""Characters at the end of a call made of one unit of at most ``RUN_ON_UNIT`` characters
repeated, after which a call is stopped as a run-on."""
RUN_ON_UNIT = 8
RUN_ON_WORD_PAIRS = 3
"""Times the same pair of words may occur among the last ``RUN_ON_WORDS`` words of one
string before a call is stopped: n-gram blocking keeps a small model from repeating tokens
exactly, so it repeats ``12 20`` as ``12_20``, ``12.20``, ``12-20`` instead."""
RUN_ON_WORDS = 16
_WORD = re.compile(r"[^\W_]+")


def repeated_tail(text: str) -> str | None:
    """The unit that the last ``RUN_ON_CHARACTERS`` characters of ``text`` repeat, if any."""
    if len(text) < RUN_ON_CHARACTERS:
        return None
    tail = text[-RUN_ON_CHARACTERS:]
    for size in range(1, RUN_ON_UNIT + 1):
        if all(tail[i] == tail[i + size] for i in range(len(tail) - size)):
            return tail[-size:]
    return None


def item_pattern(items: Sequence[str]) -> str | None:
    """How the last ``RUN_ON_ITEMS`` items of an array repeat or count, if they do."""
    if len(items) < RUN_ON_ITEMS:
        return None
    last = items[-RUN_ON_ITEMS:]
    if len(set(last)) == 1:
        return f"the item {last[0]} repeated {RUN_ON_ITEMS} times"
    try:
        numbers = [float(item) for item in last]
    except ValueError:
        return None
    steps = {b - a for a, b in itertools.pairwise(numbers)}
    if len(steps) == 1:
        step = steps.pop()
        direction = "up" if step > 0 else "down"
        return f"items counting {direction} by {abs(step):g} ({', '.join(last)}, ...)"
    return None


def repeated_words(text: str) -> str | None:
    """A pair of words that occurs ``RUN_ON_WORD_PAIRS`` times among the last
    ``RUN_ON_WORDS`` words of ``text`` (letters and digits; case ignored), if any."""
    words = [w.lower() for w in _WORD.findall(text)[-RUN_ON_WORDS:]]
    pairs = list(itertools.pairwise(words))
    for pair in dict.fromkeys(pairs):
        if pairs.count(pair) >= RUN_ON_WORD_PAIRS:
            return " ".join(pair)
    return None


class RunOnCheck:
    """Reads a JSON reply as it streams and says when it runs on: an array's items repeat
    or count by a constant step (`item_pattern`), its last characters repeat one short unit
    (`repeated_tail`), or a string repeats a pair of words (`repeated_words`)."""

    def __init__(self) -> None:
        self.text = ""
        self.reason: str | None = None
        self._arrays: list[tuple[int, list[str]] | None] = []  # per open bracket
        self._in_string = False
        self._escaped = False
        self._string_start = 0

    def feed(self, piece: str) -> str | None:
        """The reason the reply runs on, once it does (then it stays set)."""
        for char in piece:
            self._read(char)
        if self.reason is None:
            unit = repeated_tail(self.text)
            if unit is not None:
                self.reason = f"{unit!r} repeated over {RUN_ON_CHARACTERS} characters"
        if self.reason is None and self._in_string:
            pair = repeated_words(self.text[self._string_start :])
            if pair is not None:
                self.reason = f"a string repeating {pair!r} {RUN_ON_WORD_PAIRS} times"
        return self.reason

    def _read(self, char: str) -> None:
        at = len(self.text)
        self.text += char
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
        elif char == '"':
            self._in_string = True
            self._string_start = at + 1
        elif char in "[{":
            self._arrays.append((at + 1, []) if char == "[" else None)
        elif char in "]}" and self._arrays:
            self._arrays.pop()
        elif char == "," and self._arrays and self._arrays[-1] is not None:
            start, items = self._arrays[-1]
            items.append(self.text[start:at].strip())
            self._arrays[-1] = (at + 1, items)
            pattern = item_pattern(items)
            if pattern is not None and self.reason is None:
                self.reason = f"an array of {pattern}"


@dataclass
class ToolCallResult:
    """What the end of a reply adds to the last chunk."""

    content: str = ""
    """The last piece's text, or held-back JSON that is not a call; empty with a call."""
    tool_call_chunks: list[ToolCallChunk] = field(default_factory=list)
    """The call the reply made (at most one), as a chunk LangChain merges into tool_calls."""
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)
    """A call that is not valid JSON (usually one cut short by max_tokens)."""
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
        self.tokens = 0
        """Tokens streamed so far (of the pieces fed)."""
        self._run_on = RunOnCheck()

    @property
    def run_on(self) -> str | None:
        """Why the held-back JSON runs on, once it does: the reply should stop there."""
        return self._run_on.reason if self.is_json else None

    def feed(self, text: str, tokens: int = 0) -> str:
        """The content to stream now for a piece of reply text (of ``tokens`` tokens)."""
        self.tokens += tokens
        if self.is_json is None and text:
            self.is_json = text.startswith("{")
        if self.is_json:
            self.buffer += text
            self._run_on.feed(text)
            return ""
        return text

    def finish(self, text: str, finish_reason: str) -> ToolCallResult:
        """The last piece: flush held-back JSON as a tool call, content or an invalid call."""
        content = self.feed(text)
        if not self.is_json or not self.buffer:
            return ToolCallResult(content=content)
        raw = self.buffer
        if self.run_on is not None:
            reason = (
                f"the call's arguments ran on: {self.run_on}; stopped after {self.tokens} "
                "tokens instead of decoding until max_tokens"
            )
            return ToolCallResult(invalid_tool_calls=[self._invalid(raw, reason)], error=reason)
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
