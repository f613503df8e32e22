"""Request bodies in OpenAI's shape (chat completions) and the history routes' shapes.

Unknown fields are refused (400 naming the field, as OpenAI answers), so a client never
believes a setting took effect when it did not. Fields OpenAI has that this server cannot
honour are accepted only at their neutral value (``n`` 1, penalties 0, no ``logit_bias``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_SEQUENCES = 4


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionCall(Strict):
    name: str
    arguments: str
    """The call's arguments as a JSON object in a string, as OpenAI sends them."""


class ToolCall(Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(Strict):
    """One chat message; which fields a role needs is checked after parsing."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    """Text, or a list of text parts ``{"type": "text", "text": ...}``."""
    name: str | None = None
    """A participant's name; accepted and not used."""
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    """An assistant's refusal, as OpenAI returns it; accepted and not used."""

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content: Any) -> Any:
        if isinstance(content, list):
            for index, part in enumerate(content):
                kind = part.get("type")
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(
                        f"part {index} is of type {kind!r}; this model reads text parts only "
                        '({"type": "text", "text": ...})'
                    )
        return content

    @model_validator(mode="after")
    def _fields_of_role(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id (the id of the call it answers)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "assistant":
            if self.content is None and not self.tool_calls:
                raise ValueError("an assistant message needs content or tool_calls")
        elif self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part["text"]) for part in self.content)


class FunctionDefinition(Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """JSON Schema of the arguments object."""
    strict: bool | None = None
    """Accepted: calls are always decoded under a grammar of the schema."""


class ToolDefinition(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(Strict):
    name: str = Field(default="response", pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_for_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('type "json_schema" needs json_schema: {"name", "schema"}')
        return self


class StreamOptions(Strict):
    include_usage: bool = False
    """Send a last chunk with the request's token usage (and no choices)."""
    include_obfuscation: bool | None = None
    """Accepted; chunks are not padded."""


class ChatCompletionRequest(Strict):
    """``POST /v1/chat/completions``."""

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    """OpenAI's newer name for max_tokens; it wins when both are given."""
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    """Accepted; a reply makes at most one call."""
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = None
    """The end user whose history personalizes the reply (none: not personalized)."""
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    remember_turns: bool | None = None
    """Extension: store the user's message in their history (default: the key's, else the
    server's setting)."""
    remember_replies: bool | None = None
    """Extension: with remember_turns, store the reply too."""
    timeout: float | None = Field(default=None, gt=0)
    """Extension: seconds this request may take (at most the server's request timeout)."""
    mode: Literal["auto", "assist", "write"] | None = None
    """Extension: "assist" answers the user, "write" writes as the user, "auto" tells them
    apart by the system message (default: the server model's, "auto")."""

    @field_validator("stop")
    @classmethod
    def _stop_sequences(cls, stop: str | list[str] | None) -> str | list[str] | None:
        sequences = [stop] if isinstance(stop, str) else stop or []
        if len(sequences) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in sequences):
            raise ValueError("a stop sequence must not be empty")
        return stop

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError("only n=1 is supported; send n requests for n replies")
        return n

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value not in (None, 0, 0.0):
            raise ValueError("penalties are not supported (0 only); repeats are blocked by n-grams")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported")
        return value

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def stop_sequences(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class HistoryItemIn(Strict):
    """One history item to store (as ``CurpChatModel.add_history`` stores it)."""

    text: str
    kind: str = "text"
    created_at: datetime | None = None
    """ISO 8601 (a time without a zone is UTC) or Unix seconds; the time of storing if
    absent."""
    metadata: dict[str, Any] = Field(default_factory=dict)


class AddItemsRequest(Strict):
    """``POST /v1/users/{user_id}/items``: stored all or nothing."""

    items: list[HistoryItemIn] = Field(min_length=1)
    truncate: bool = False
    """Cut over-long items (over 20,000 characters) instead of refusing the batch."""
