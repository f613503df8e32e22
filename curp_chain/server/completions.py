"""``POST /v1/chat/completions`` and ``GET /v1/models``.

A request is checked whole before anything runs (400 naming the field), admitted (429 when
the server is full) and streamed from ``CurpChatModel.astream`` with the end user's
tenant-scoped id. A stream's headers go out with its first chunk, so anything that fails
before it (a full queue, a timeout, a bad tool schema) is still an HTTP status; a failure
after it is an error event. A client that disconnects stops its generation at the next
token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langchain_core.messages import BaseMessageChunk
from starlette.types import Receive, Scope, Send

from curp_chain.chat.tools.decoding import response_format_schema
from curp_chain.chat.tools.specs import resolve_tool_choice, tool_specs
from curp_chain.errors import BackendError, CurpError
from curp_chain.server.errors import ApiError, from_curp_error
from curp_chain.server.messages import generation_kwargs, max_tokens_of, to_langchain
from curp_chain.server.replies import Reply, sse
from curp_chain.server.schemas import ChatCompletionRequest
from curp_chain.server.state import ServerState, request_tenant, server_state
from curp_chain.server.tenants import Tenant

logger = logging.getLogger(__name__)

router = APIRouter()

T = TypeVar("T")

CLIENT_CLOSED = 499
"""Status recorded (in metrics) for a request whose client left before its answer."""

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""No caching, and no buffering by an nginx in front (it would hold tokens back)."""


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready."""


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    state = server_state(request)
    return {"object": "list", "data": [_model_card(state)]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    state = server_state(request)
    if model_id != state.settings.model_name:
        raise _unknown_model(model_id, state, param=None)
    return _model_card(state)


def _model_card(state: ServerState) -> dict[str, Any]:
    return {
        "id": state.settings.model_name,
        "object": "model",
        "created": state.started,
        "owned_by": "curp-chain",
    }


def _unknown_model(model: str, state: ServerState, *, param: str | None) -> ApiError:
    return ApiError(
        404,
        f"the model {model!r} does not exist; this server serves {state.settings.model_name!r}",
        param=param,
        code="model_not_found",
    )


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    state = server_state(request)
    if body.model != state.settings.model_name:
        raise _unknown_model(body.model, state, param="model")
    messages = to_langchain(body.messages)
    kwargs = _call_kwargs(body, request_tenant(request), state)
    arrived = time.perf_counter()
    state.admission.enter()
    handed_over = False
    try:
        reply = Reply(state.settings.model_name, wants_logprobs=bool(body.logprobs))
        chunks = aiter(state.model.astream(messages, **kwargs))
        first = await _until_disconnect(request, _first(chunks))
        state.metrics.first_token.observe(time.perf_counter() - arrived)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _events(state, reply, first, chunks, include_usage=include_usage)
            handed_over = True
            return EventStream(events, chunks, state)
        await _until_disconnect(request, _collect(reply, first, chunks))
        _count_tokens(state, reply)
        return JSONResponse(reply.completion())
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED)
    except CurpError as error:
        raise from_curp_error(error, retry_after=state.settings.retry_after) from None
    finally:
        if not handed_over:
            state.admission.leave()


class EventStream(StreamingResponse):
    """A stream of server-sent events that, however it ends (done, failed, the client gone,
    the server shutting down), stops its generation and leaves admission once."""

    def __init__(
        self, events: AsyncIterator[bytes], chunks: AsyncIterator[Any], state: ServerState
    ):
        super().__init__(events, media_type="text/event-stream", headers=_SSE_HEADERS)
        self._closers = [events, chunks]
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._state.admission.leave()
            for closer in self._closers:
                with contextlib.suppress(Exception):
                    await closer.aclose()  # type: ignore[attr-defined]


def _call_kwargs(body: ChatCompletionRequest, tenant: Tenant, state: ServerState) -> dict[str, Any]:
    """The request as ``CurpChatModel`` keyword arguments, each checked with the field named."""
    settings = state.settings
    kwargs = generation_kwargs(
        body, max_tokens_of(body, settings.default_max_tokens, settings.max_tokens_limit)
    )
    _check_decoding(kwargs)
    if body.user is not None:
        try:
            kwargs["user_id"] = tenant.store_id(body.user)
        except CurpError as error:
            raise from_curp_error(error, param="user") from None
    stop = body.stop_sequences()
    if stop:
        kwargs["stop"] = stop
    kwargs["remember_turns"] = _first_set(
        body.remember_turns, tenant.remember_turns, settings.remember_turns
    )
    kwargs["remember_replies"] = _first_set(
        body.remember_replies, tenant.remember_replies, settings.remember_replies
    )
    timeout = settings.request_timeout
    kwargs["timeout"] = min(body.timeout, timeout) if body.timeout else timeout
    if body.mode is not None:
        kwargs["mode"] = body.mode
    return kwargs


def _first_set(*values: bool | None) -> bool:
    return next((v for v in values if v is not None), False)


def _check_decoding(kwargs: dict[str, Any]) -> None:
    """Tools, tool_choice and response_format as the model will read them, refused here
    with the field named rather than half-way through a request."""
    if "tools" in kwargs:
        specs = _checked("tools", lambda: tool_specs(kwargs["tools"]))
        _checked("tool_choice", lambda: resolve_tool_choice(kwargs["tool_choice"], specs))
    if "response_format" in kwargs:
        _checked("response_format", lambda: response_format_schema(kwargs["response_format"]))


def _checked(param: str, check: Callable[[], T]) -> T:
    try:
        return check()
    except CurpError as error:
        raise ApiError(400, str(error), param=param, code="invalid_value") from None


async def _first(chunks: AsyncIterator[BaseMessageChunk]) -> BaseMessageChunk:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        raise BackendError("the model returned no reply") from None


async def _collect(
    reply: Reply, first: BaseMessageChunk, chunks: AsyncIterator[BaseMessageChunk]
) -> None:
    reply.add(first)
    async for chunk in chunks:
        reply.add(chunk)


async def _events(
    state: ServerState,
    reply: Reply,
    first: BaseMessageChunk,
    chunks: AsyncIterator[BaseMessageChunk],
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The stream's server-sent events; a failure after the headers is an error event."""
    try:
        yield sse(reply.event({"role": "assistant", "content": ""}, logprobs=[]))
        chunk: BaseMessageChunk | None = first
        while chunk is not None:
            text, logprobs = reply.add(chunk)
            if text or logprobs:
                yield sse(reply.event({"content": text}, logprobs=logprobs))
            chunk = await anext(chunks, None)
        yield sse(reply.last_event())
        if include_usage:
            yield sse(reply.usage_event())
        yield sse("[DONE]")
        _count_tokens(state, reply)
    except CurpError as error:
        api_error = from_curp_error(error, retry_after=state.settings.retry_after)
        yield sse(api_error.body())


def _count_tokens(state: ServerState, reply: Reply) -> None:
    if reply.usage:
        state.metrics.tokens.labels("prompt").inc(reply.usage["prompt_tokens"])
        state.metrics.tokens.labels("completion").inc(reply.usage["completion_tokens"])


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, or ClientDisconnected (``work`` cancelled, which stops its
    generation) when the client closes the connection first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled() or not task.done():
        raise ClientDisconnected
    return task.result()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
