"""``/healthz`` (the process answers), ``/readyz`` (model loaded, store reachable) and
``/metrics`` (Prometheus). None of them needs a key or shows a tenant's data."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from curp_chain.server.state import server_state

logger = logging.getLogger(__name__)

router = APIRouter()

READY_TIMEOUT_S = 5.0
"""How long /readyz waits for the store to answer."""

PROBE_USER = "curp:readyz"
"""The user id /readyz reads (read only; any answer, even an empty one, means reachable)."""


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    state = server_state(request)
    store = state.model.get_store()
    try:
        await asyncio.wait_for(asyncio.to_thread(store.get_items, PROBE_USER, 1), READY_TIMEOUT_S)
    except Exception as error:  # any failure means: not ready
        logger.warning("readiness: the history store does not answer: %s", error)
        return JSONResponse(
            {"status": "unavailable", "model": "loaded", "store": "unreachable"},
            status_code=503,
            headers={"Retry-After": str(state.settings.retry_after)},
        )
    return JSONResponse({"status": "ready", "model": "loaded", "store": "reachable"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
