"""What every route shares: the settings, the chat model, the keys, metrics and admission."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from curp_chain.chat.chat_model import CurpChatModel
from curp_chain.runtime.defaults import open_backend
from curp_chain.server.limits import Admission
from curp_chain.server.metrics import ServerMetrics
from curp_chain.server.settings import ServerSettings
from curp_chain.server.tenants import LOCAL_TENANT, KeyRing, Tenant

logger = logging.getLogger(__name__)


@dataclass
class ServerState:
    settings: ServerSettings
    model: CurpChatModel
    keys: KeyRing | None
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    admission: Admission = field(init=False)
    started: int = field(default_factory=lambda: int(time.time()))
    """Unix time the server started (the model's ``created`` in /v1/models)."""

    def __post_init__(self) -> None:
        # Requests preparing, queued or generating: the backend's slots and queue.
        self.admission = Admission(self.settings.slots + self.settings.max_queued)
        scheduler = getattr(self.model.get_backend(), "scheduler", None)
        if scheduler is not None:
            self.metrics.watch_scheduler(lambda: scheduler.queued, lambda: scheduler.active)
        self.metrics.in_flight.set_function(lambda: self.admission.in_flight)


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.curp
    return state


def request_tenant(request: Request) -> Tenant:
    """The tenant the authentication middleware found for this request."""
    tenant = request.scope.get("state", {}).get("tenant")
    return tenant if isinstance(tenant, Tenant) else LOCAL_TENANT


def build_model(settings: ServerSettings) -> CurpChatModel:
    """The chat model the server answers with: its backend (slots and queue as set), its
    history store, checkpoint and encoder, all loaded now rather than on a first request."""
    # The server admits slots + max_queued requests (Admission, a 429 past it); the
    # backend's own queue holds every request until its worker takes it, even into a free
    # slot, so it must hold all the admitted ones.
    admitted = settings.slots + settings.max_queued
    options: dict[str, Any] = {"slots": settings.slots, "max_queued": admitted}
    if settings.backend == "llamacpp":
        options |= {
            "n_threads": settings.n_threads,
            "workers": settings.workers,
            "n_ctx": settings.context_length,
        }
    else:
        options["context_length"] = settings.context_length
    started = time.perf_counter()
    backend = open_backend(settings.backend, settings.model_path, **options)
    model = CurpChatModel(
        backend=backend,
        checkpoint=settings.checkpoint,
        store_url=settings.store,
        max_tokens=settings.default_max_tokens,
        timeout=settings.request_timeout,
        model=settings.model_name,
    )
    model.get_personalizer()  # checkpoint, encoder and store (schema set up)
    # One token through the whole path (the encoder's and the backend's first calls are
    # several times slower than the rest), so that no client's request pays for it.
    model.invoke("Hello", max_tokens=1)
    logger.info(
        "model %s loaded in %.1f s (backend %s, %d slots)",
        backend.model_id,
        time.perf_counter() - started,
        settings.backend,
        settings.slots,
    )
    return model
