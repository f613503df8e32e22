"""Running the server: checks that keep it safe, the model loaded, then uvicorn.

uvicorn handles SIGTERM and SIGINT: it stops accepting connections, lets in-flight
requests finish for ``shutdown_timeout`` seconds, cancels what remains (a cancelled
stream stops its generation at the next token) and exits (status 0 after SIGTERM).
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import torch
import uvicorn

from curp_chain.server.app import create_app
from curp_chain.server.settings import ServerSettings, check_exposure
from curp_chain.server.state import build_model
from curp_chain.server.tenants import KeyRing

logger = logging.getLogger(__name__)


def serve(settings: ServerSettings) -> None:
    """Load the model and serve until SIGTERM or SIGINT."""
    check_exposure(settings)
    keys = KeyRing.from_file(settings.api_keys) if settings.api_keys else None
    # A process-wide setting: the server owns its process (see docs/benchmarks.md).
    torch.set_num_threads(settings.torch_threads)
    model = build_model(settings)
    app = create_app(settings, model, keys)
    if keys is not None:
        logger.info("serving tenants %s", ", ".join(keys.tenants))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout,
        root_path=settings.root_path,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
    )
    # uvicorn raises the signal it stopped on again once it is done, so that the default
    # handler ends the process; a SIGTERM handled here ends it with status 0 instead.
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.Server(config).run()
    logger.info("stopped")


def _stopped(signum: int, frame: FrameType | None) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""
