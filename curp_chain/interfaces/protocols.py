"""The two seams of curp-chain: where histories live and which LLM runs the soft prompt.

The core implements neither; `curp_chain_stores` and `curp_chain_integrations` do. A backend
needs only `SoftPromptBackend`; `ScheduledBackend` and `TokenizingBackend` are capabilities
the core uses when a backend has them (checked with ``isinstance``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from curp_chain.errors import InvalidGenerationParamsError
from curp_chain.interfaces.history import HistoryItem, NewHistoryItem, UserCodes, UserSummary


@runtime_checkable
class HistoryStore(Protocol):
    """Persists users' history items and, per item, its cached PQ codes.

    Every public call is one transaction: it either happens whole or not at all.
    """

    def setup(self) -> None:
        """Create or migrate the schema. Idempotent; never called implicitly by a constructor."""
        ...

    def add_items(
        self,
        user_id: str,
        items: Sequence[NewHistoryItem],
        codes: Sequence[Sequence[int]] | None = None,
        codebook_version: str | None = None,
        *,
        replacing: Sequence[int] = (),
    ) -> list[HistoryItem]:
        """Store items (and their codes, if given, made by ``codebook_version``), deleting
        the user's items with ids in ``replacing`` in the same transaction."""
        ...

    def count_by_hash(self, user_id: str, hashes: Sequence[str]) -> Mapping[str, int]:
        """How many of the user's items have each `curp_chain.interfaces.history.content_hash`."""
        ...

    def get_items(
        self, user_id: str, limit: int | None = None, *, kind: str | None = None
    ) -> list[HistoryItem]:
        """The user's items (only those of ``kind``, if given), newest first."""
        ...

    def get_codes(self, user_id: str, codebook_version: str, limit: int | None = None) -> UserCodes:
        """Cached codes of the user's newest ``limit`` items, and those items lacking codes."""
        ...

    def save_codes(
        self, codes: Mapping[int, Sequence[int]], codebook_version: str
    ) -> AbstractSet[int]:
        """Cache codes for existing items (item id -> codes); returns the ids saved, leaving
        out items deleted meanwhile."""
        ...

    def list_users(self) -> list[UserSummary]: ...

    def delete_items(self, user_id: str, item_ids: Sequence[int]) -> int:
        """Remove these items of the user (ids of other users' items are ignored); returns
        the number removed. The user stays."""
        ...

    def delete_user(self, user_id: str) -> int:
        """Remove the user and their items; returns the number of items removed."""
        ...

    def close(self) -> None:
        """Release the store's connections; a closed store is not used again."""
        ...


SoftVectors = npt.NDArray[np.float32]
"""Soft tokens, shape (n_soft, llm_hidden), in the LLM's input-embedding space."""


@dataclass(frozen=True)
class SoftPrompt:
    """A chat-templated prompt with soft tokens spliced between two pieces of text.

    ``before`` ends and ``after`` starts where the soft tokens go; ``after`` is never empty
    (it holds at least the assistant header), so a soft token is never the last position.
    """

    before: str
    soft: SoftVectors | None
    after: str


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 128
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    no_repeat_ngram_size: int = 4
    """Block any n-gram of this size from repeating (0 disables); small models loop without it."""
    no_echo: tuple[str, ...] = ()
    """Prompt passages the reply must not echo: no two tokens in a row of a passage may appear
    in it (a small model may repeat a line of its prompt instead of answering). Words of the
    passage stay free one at a time."""
    seed: int | None = None
    logprobs: bool = False
    """Report each generated token's log-probability under the model (before sampling
    settings and n-gram blocking change the distribution)."""
    top_logprobs: int = 0
    """With ``logprobs``: also report this many most likely tokens at each position."""
    json_schema: Mapping[str, Any] | None = None
    """Constrain the reply to JSON that this JSON Schema accepts (a grammar masks every token
    that would break it)."""
    no_json_start: bool = False
    """Forbid a first token starting with ``{``: a text reply, even when earlier turns show
    JSON tool calls the model could copy (tool calling with ``tool_choice="none"``)."""
    json_or_text: bool = False
    """With ``json_schema``: the reply may instead be plain text that does not start with
    ``{``; the model chooses with its first token (tool calling with ``tool_choice="auto"``)."""

    def __post_init__(self) -> None:
        if self.top_logprobs < 0:
            raise InvalidGenerationParamsError(
                f"top_logprobs must be 0 or more, not {self.top_logprobs}"
            )
        if self.top_logprobs and not self.logprobs:
            raise InvalidGenerationParamsError("top_logprobs needs logprobs=True")
        if self.json_or_text and self.json_schema is None:
            raise InvalidGenerationParamsError("json_or_text needs a json_schema")
        if isinstance(self.no_echo, str):  # it would iterate as single characters
            raise InvalidGenerationParamsError(
                "no_echo takes a tuple of passages, not one string: no_echo=(text,)"
            )


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token, its log-probability and, when asked for, the likeliest tokens
    at its position (text, log-probability), most likely first."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class GenerationChunk:
    """One piece of streamed output."""

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: str | None = None
    """Set on the last chunk: "stop" (end of turn or a stop sequence) or "length"."""
    usage: Mapping[str, int] = field(default_factory=dict)
    """Set on the last chunk: input_tokens (text + soft), output_tokens, soft_tokens."""
    logprobs: tuple[TokenLogprob, ...] = ()
    """With ``GenerationParams.logprobs``: the tokens generated since the previous chunk."""


@runtime_checkable
class SoftPromptBackend(Protocol):
    """An LLM that accepts input embeddings between text segments."""

    @property
    def model_id(self) -> str:
        """Identifies the weights, e.g. "SmolLM2-135M-Instruct"; checkpoints record it."""
        ...

    @property
    def hidden_size(self) -> int: ...

    @property
    def context_length(self) -> int: ...

    @property
    def chat_template(self) -> str:
        """The Jinja2 chat template the model was trained with."""
        ...

    @property
    def special_tokens(self) -> Mapping[str, str]:
        """bos_token and eos_token strings, as the chat template expects them."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def stream(self, prompt: SoftPrompt, params: GenerationParams) -> Iterator[GenerationChunk]:
        """Generate from a fresh context (no KV cache carried over from another request)."""
        ...


class ChunkStream(Protocol):
    """A queued request's output, read with ``for`` or ``async for``; ``close()`` stops
    its generation at the next token (`curp_chain.runtime.scheduler.GenerationStream`)."""

    def __iter__(self) -> Iterator[GenerationChunk]: ...

    def __next__(self) -> GenerationChunk: ...

    def __aiter__(self) -> AsyncIterator[GenerationChunk]: ...

    async def __anext__(self) -> GenerationChunk: ...

    def close(self) -> None: ...


@runtime_checkable
class ScheduledBackend(SoftPromptBackend, Protocol):
    """A backend that queues requests on a scheduler of its own (the llama.cpp,
    transformers and vLLM backends). Requests to a backend without one run one at a time
    through its ``stream``."""

    def submit(
        self, prompt: SoftPrompt, params: GenerationParams, *, timeout: float | None = None
    ) -> ChunkStream:
        """Queue a request and return its stream at once. Past ``timeout`` seconds (waiting
        in the queue included) the stream raises RequestTimeoutError; a full queue raises
        QueueFullError."""
        ...


@runtime_checkable
class TokenizingBackend(SoftPromptBackend, Protocol):
    """A backend that exposes its tokenizer's ids (all bundled backends do)."""

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``: special-token text (``<|im_start|>``) becomes its special
        token, and no BOS is added."""
        ...
