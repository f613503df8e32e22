"""The chat model's chunks -> OpenAI's chat completion and chat completion chunk objects."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessageChunk, BaseMessageChunk


def _logprob_entry(entry: dict[str, Any]) -> dict[str, Any]:
    token = str(entry["token"])
    return {
        "token": token,
        "logprob": entry["logprob"],
        "bytes": list(token.encode("utf-8")),
        "top_logprobs": [
            {"token": t["token"], "logprob": t["logprob"], "bytes": list(t["token"].encode())}
            for t in entry.get("top_logprobs", [])
        ],
    }


def chunk_logprobs(chunk: BaseMessageChunk) -> list[dict[str, Any]]:
    """The chunk's token log-probabilities in OpenAI's shape (empty unless asked for)."""
    found = chunk.response_metadata.get("logprobs") or {}
    return [_logprob_entry(entry) for entry in found.get("content", [])]


def _tool_calls(chunk: AIMessageChunk) -> list[dict[str, Any]]:
    """The reply's tool call (at most one) in OpenAI's shape. A call cut short by max_tokens
    (an invalid call) keeps its partial arguments, as OpenAI returns them, with
    finish_reason "length"."""
    calls = []
    for call in chunk.tool_call_chunks:
        calls.append((call.get("id"), call.get("name"), call.get("args") or "{}"))
    for invalid in chunk.invalid_tool_calls:
        raw = invalid.get("args") or ""
        # The raw reply text, JSON-quoted (see curp_chain.chat.tools.stream).
        with contextlib.suppress(json.JSONDecodeError):
            raw = json.loads(raw)
        calls.append((invalid.get("id"), invalid.get("name"), str(raw)))
    return [
        {
            "index": index,
            "id": call_id or "call_" + uuid.uuid4().hex[:24],
            "type": "function",
            "function": {"name": name or "", "arguments": arguments},
        }
        for index, (call_id, name, arguments) in enumerate(calls)
    ]


@dataclass
class Reply:
    """One reply being built from the model's chunks, and what OpenAI's objects say of it."""

    model: str
    id: str = field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))
    content: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] | None = None
    curp: dict[str, Any] = field(default_factory=dict)
    wants_logprobs: bool = False

    def add(self, chunk: BaseMessageChunk) -> tuple[str, list[dict[str, Any]]]:
        """Take a chunk in; returns its text and log-probabilities."""
        text = chunk.content if isinstance(chunk.content, str) else chunk.text
        logprobs = chunk_logprobs(chunk)
        self.content.append(text)
        self.logprobs.extend(logprobs)
        finish = chunk.response_metadata.get("finish_reason")
        if finish is not None:
            self.finish_reason = str(finish)
            self.curp = _public_curp(chunk.response_metadata.get("curp") or {})
            if isinstance(chunk, AIMessageChunk):
                self.tool_calls = _tool_calls(chunk)
                if chunk.usage_metadata:
                    usage = chunk.usage_metadata
                    self.usage = {
                        "prompt_tokens": usage["input_tokens"],
                        "completion_tokens": usage["output_tokens"],
                        "total_tokens": usage["total_tokens"],
                    }
        return text, logprobs

    @property
    def text(self) -> str:
        return "".join(self.content)

    def completion(self) -> dict[str, Any]:
        """The whole reply as a ``chat.completion``."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": None}
        if self.tool_calls:
            # "index" belongs to streamed deltas only.
            message["tool_calls"] = [
                {k: v for k, v in call.items() if k != "index"} for call in self.tool_calls
            ]
            message["content"] = self.text or None
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": {"content": self.logprobs} if self.wants_logprobs else None,
                    "finish_reason": self.finish_reason or "stop",
                }
            ],
            "usage": self.usage or _no_usage(),
            "curp": self.curp,
        }

    def event(
        self,
        delta: dict[str, Any],
        *,
        finish_reason: str | None = None,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """One ``chat.completion.chunk``."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "logprobs": {"content": logprobs} if self.wants_logprobs else None,
                    "finish_reason": finish_reason,
                }
            ],
        }

    def last_event(self) -> dict[str, Any]:
        """The chunk that ends the reply: its tool call, if any, and its finish reason."""
        delta: dict[str, Any] = {"tool_calls": self.tool_calls} if self.tool_calls else {}
        event = self.event(delta, finish_reason=self.finish_reason or "stop", logprobs=[])
        event["curp"] = self.curp
        return event

    def usage_event(self) -> dict[str, Any]:
        """``stream_options.include_usage``: the last chunk, with usage and no choices."""
        event = self.event({})
        event["choices"] = []
        event["usage"] = self.usage or _no_usage()
        return event


def _no_usage() -> dict[str, int]:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def _public_curp(curp: dict[str, Any]) -> dict[str, Any]:
    """What a client may see of the personalization: never the stored (tenant-scoped) id."""
    keys = ("personalized", "reason", "history_items", "soft_tokens", "mode")
    return {key: curp[key] for key in keys if key in curp}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    payload = (
        data
        if isinstance(data, str)
        else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    )
    return f"data: {payload}\n\n".encode()
