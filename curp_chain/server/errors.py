"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

A caller's mistake is a 4xx naming the field (``param``); the server's own failures are a
5xx whose message says what to do and never carries internals (store URLs, paths, keys),
which go to the log instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from curp_chain.errors import (
    BackendError,
    CheckpointError,
    ContextLengthError,
    CurpError,
    InvalidHistoryItemError,
    InvalidUserIdError,
    MissingDependencyError,
    ModelFileNotFoundError,
    QueueFullError,
    RequestTimeoutError,
    StoreError,
)

logger = logging.getLogger(__name__)

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "server_error",
    504: "timeout_error",
}


class ApiError(Exception):
    """An HTTP error to answer in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        if self.status >= 500:
            return _TYPES.get(self.status, "server_error")
        return _TYPES.get(self.status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_curp_error(
    error: CurpError, *, param: str | None = None, retry_after: int = 1
) -> ApiError:
    """The HTTP answer to a project error: the caller's mistakes 400 (naming ``param``), a
    full queue 429, a timeout 504, the store 503, anything else of the server's 500."""
    retry = {"Retry-After": str(retry_after)}
    if isinstance(error, InvalidHistoryItemError):
        return ApiError(400, str(error), param=_item_param(error), code="invalid_history_item")
    if isinstance(error, InvalidUserIdError):
        return ApiError(400, str(error), param=param, code="invalid_user_id")
    if isinstance(error, ContextLengthError):
        return ApiError(400, str(error), param="messages", code="context_length_exceeded")
    if isinstance(error, QueueFullError):
        message = "too many requests are waiting for the model; retry after a moment"
        return ApiError(429, message, code="queue_full", headers=retry)
    if isinstance(error, RequestTimeoutError):
        return ApiError(504, str(error), code="timeout")
    if isinstance(error, StoreError):
        logger.error("history store error: %s", error)
        message = "the history store is unavailable; retry after a moment"
        return ApiError(503, message, code="store_unavailable", headers=retry)
    internal = (BackendError, CheckpointError, MissingDependencyError, ModelFileNotFoundError)
    if isinstance(error, internal):
        logger.error("server error: %s", error)
        return ApiError(500, "the model failed on this request; see the server's log")
    # What remains are checks of the caller's input (unsupported content, a bad tool
    # schema, a bad tool_choice), raised before anything ran.
    return ApiError(400, str(error), param=param)


def _item_param(error: InvalidHistoryItemError) -> str:
    if error.index is None:
        return "items"
    rule = error.rule if error.rule in ("text", "kind", "created_at", "metadata") else None
    return f"items[{error.index}]" + (f".{rule}" if rule else "")


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})
"""Union members pydantic names in an error's location (``content.str``), not fields."""


def param_path(loc: Sequence[int | str]) -> str | None:
    """``("body", "messages", 0, "content")`` -> ``"messages[0].content"``, leaving out
    what pydantic adds that is no field: union members (``str``, ``list[...]``, a model's
    class name) and validators (``function-after[...]``)."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not ("[" in part or part[:1].isupper() or part in _TYPE_TAGS):
            text += f".{part}" if text else part
    return text or None


def validation_error(error: RequestValidationError) -> ApiError:
    """FastAPI's validation error as a 400 naming the first bad field."""
    first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
    kind = first.get("type", "")
    param = param_path(first.get("loc", ()))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "json_invalid":
        context = first.get("ctx")
        detail = context.get("error", message) if isinstance(context, dict) else message
        return ApiError(400, f"the request body is not valid JSON ({detail})", code="invalid_json")
    if param is None:
        return ApiError(400, "the request body must be a JSON object", code="invalid_body")
    if kind == "extra_forbidden":
        return ApiError(400, f"unrecognized request argument supplied: {param}", param=param)
    if kind == "missing":
        return ApiError(400, f"missing required parameter: {param}", param=param)
    return ApiError(400, f"{param}: {message}", param=param, code="invalid_value")


def install_handlers(app: FastAPI, *, retry_after: int) -> None:
    """Every error the app answers, in OpenAI's shape."""

    async def on_api_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        return error.response()

    async def on_validation(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return validation_error(error).response()

    async def on_http(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        message = str(error.detail)
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the API"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return ApiError(error.status_code, message, headers=error.headers).response()

    async def on_curp_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, CurpError)
        return from_curp_error(error, retry_after=retry_after).response()

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return ApiError(500, "internal server error; see the server's log").response()

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(CurpError, on_curp_error)
    app.add_exception_handler(Exception, on_unexpected)
