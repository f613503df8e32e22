"""Authentication: every ``/v1/`` request needs a known API key when the server has keys."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from curp_chain.server.errors import ApiError
from curp_chain.server.tenants import LOCAL_TENANT, KeyRing

PROTECTED_PREFIX = "/v1/"
"""Routes outside it (health, readiness, metrics, the API docs) hold no tenant's data."""


class ApiKeyAuth:
    """ASGI middleware: finds the tenant of ``Authorization: Bearer KEY`` and puts it in the
    request's state, or answers 401 before the body is read. Without a key ring every
    request is the one local tenant's."""

    def __init__(self, app: ASGIApp, keys: KeyRing | None):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tenant = LOCAL_TENANT
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if self.keys is not None and path.startswith(PROTECTED_PREFIX):
            key = _bearer(scope)
            found = self.keys.tenant_for(key) if key is not None else None
            if found is None:
                await _refusal(missing=key is None)(scope, receive, send)
                return
            tenant = found
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and key.strip():
                return key.strip()
    return None


def _refusal(*, missing: bool) -> JSONResponse:
    message = (
        "no API key given; send it as 'Authorization: Bearer KEY'"
        if missing
        else "the API key is not valid for this server"
    )
    headers = {"WWW-Authenticate": "Bearer"}
    return ApiError(401, message, code="invalid_api_key", headers=headers).response()
