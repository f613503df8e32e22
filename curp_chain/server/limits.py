"""Bounds on what one request may cost: its body's size, and requests admitted at once."""

from __future__ import annotations

import threading
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from curp_chain.errors import QueueFullError
from curp_chain.server.errors import ApiError


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` gets 413 before the app reads any of it.

    The body is read whole here (a declared Content-Length over the limit is refused
    without reading) and handed to the app from memory; what the client sends later (its
    disconnect) still reaches the app through the original ``receive``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = ApiError(
            413,
            f"the request body is larger than {self.max_bytes:,} bytes (--max-body-bytes); "
            "split it into smaller requests",
            code="request_too_large",
        )
        await error.response()(scope, receive, send)


class Admission:
    """Chat requests in flight, at most ``limit`` at once: one more is refused at once
    (429) instead of waiting behind work the server cannot finish soon."""

    def __init__(self, limit: int):
        self.limit = limit
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self) -> None:
        with self._lock:
            if self._in_flight >= self.limit:
                raise QueueFullError(
                    f"{self._in_flight} chat requests are in flight (the limit is {self.limit})"
                )
            self._in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def __enter__(self) -> Admission:
        self.enter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.leave()
