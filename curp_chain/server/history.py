"""History over HTTP: add a user's items, read them, forget the user.

Items are stored as ``CurpChatModel.add_history`` stores them (validated, encoded once,
all or nothing); a 201 means they are committed. User ids are the tenant's own (see
`curp_chain.server.tenants`); a response never shows the stored, tenant-scoped id.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from curp_chain.errors import CurpError
from curp_chain.interfaces.history import HistoryItem, NewHistoryItem
from curp_chain.server.errors import ApiError, from_curp_error
from curp_chain.server.schemas import AddItemsRequest
from curp_chain.server.state import ServerState, request_tenant, server_state

router = APIRouter()

# ``:path`` lets a user id hold "/" (sent as %2F); the routes are told apart by their ends.
USER_ITEMS = "/v1/users/{user_id:path}/items"
USER = "/v1/users/{user_id:path}"


def _store_id(request: Request, user_id: str) -> str:
    try:
        return request_tenant(request).store_id(user_id)
    except CurpError as error:
        raise from_curp_error(error, param="user_id") from None


def _item(item: HistoryItem, user_id: str) -> dict[str, Any]:
    return {
        "id": item.id,
        "object": "history.item",
        "user": user_id,
        "text": item.text,
        "kind": item.kind,
        "created_at": item.created_at.isoformat(),
        "metadata": dict(item.metadata),
    }


@router.post(USER_ITEMS, status_code=201)
async def add_items(user_id: str, body: AddItemsRequest, request: Request) -> JSONResponse:
    state = server_state(request)
    store_id = _store_id(request, user_id)
    limit = state.settings.max_items_per_request
    if len(body.items) > limit:
        raise ApiError(
            400,
            f"{len(body.items)} items in one request; the limit is {limit} "
            "(--max-items-per-request): send them in several requests",
            param="items",
            code="too_many_items",
        )
    items = [
        NewHistoryItem(i.text, kind=i.kind, created_at=i.created_at, metadata=i.metadata)
        for i in body.items
    ]
    add = functools.partial(state.model.add_history, truncate=body.truncate)
    stored = await _in_thread(state, add, store_id, items)
    data = [_item(item, user_id) for item in stored]
    return JSONResponse({"object": "list", "data": data}, status_code=201)


@router.get(USER_ITEMS)
async def list_items(
    user_id: str, request: Request, limit: int | None = Query(default=None, ge=1)
) -> dict[str, Any]:
    """The user's newest items, newest first: ``limit`` of them (default: the most one
    request returns, ``--max-history-limit``)."""
    state = server_state(request)
    store_id = _store_id(request, user_id)
    limit = limit or state.settings.max_history_limit
    if limit > state.settings.max_history_limit:
        raise ApiError(
            400,
            f"limit is {limit}; the most one request returns is "
            f"{state.settings.max_history_limit} (--max-history-limit)",
            param="limit",
            code="invalid_value",
        )
    items = await _in_thread(state, state.model.history, store_id, limit)
    if not items:
        raise _no_such_user(user_id)
    return {"object": "list", "data": [_item(item, user_id) for item in items]}


@router.delete(USER)
async def forget_user(user_id: str, request: Request) -> dict[str, Any]:
    state = server_state(request)
    store_id = _store_id(request, user_id)
    removed = await _in_thread(state, state.model.forget_user, store_id)
    if not removed:
        raise _no_such_user(user_id)
    return {"id": user_id, "object": "user.deleted", "deleted": True, "items_deleted": removed}


def _no_such_user(user_id: str) -> ApiError:
    return ApiError(
        404, f"user {user_id!r} has no history items", param="user_id", code="user_not_found"
    )


async def _in_thread(state: ServerState, function: Any, *args: Any) -> Any:
    """``function(*args)`` on a worker thread (encoding and the store block), with project
    errors answered in OpenAI's shape."""
    try:
        return await asyncio.to_thread(function, *args)
    except CurpError as error:
        raise from_curp_error(error, retry_after=state.settings.retry_after) from None
