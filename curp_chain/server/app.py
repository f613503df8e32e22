"""The application factory: routes, error shapes, authentication, limits and metrics."""

from __future__ import annotations

from fastapi import FastAPI

from curp_chain.chat.chat_model import CurpChatModel
from curp_chain.server import completions, health, history
from curp_chain.server.auth import ApiKeyAuth
from curp_chain.server.errors import install_handlers
from curp_chain.server.limits import BodyLimit
from curp_chain.server.metrics import MetricsMiddleware
from curp_chain.server.settings import ServerSettings
from curp_chain.server.state import ServerState
from curp_chain.server.tenants import KeyRing


def create_app(settings: ServerSettings, model: CurpChatModel, keys: KeyRing | None) -> FastAPI:
    """The server's ASGI app around a loaded ``model``; ``keys`` None serves one tenant."""
    app = FastAPI(
        title="curp-chain",
        summary="Personalized chat over an OpenAI-compatible API, with per-user history.",
        version="0.1.0",
    )
    state = ServerState(settings, model, keys)
    app.state.curp = state
    install_handlers(app, retry_after=settings.retry_after)
    app.include_router(completions.router)
    app.include_router(history.router)
    app.include_router(health.router)
    # Added innermost first: metrics see every answer, authentication comes before the body
    # is read, and the body's size is checked before the app parses it.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyAuth, keys=keys)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
