"""The server's options: one pydantic model, read from ``CURP_SERVE_*`` and the command line.

Every field is an option of `curp serve` (``--max-tokens-limit`` for ``max_tokens_limit``)
and an environment variable (``CURP_SERVE_MAX_TOKENS_LIMIT``); the command line wins. The
module imports only pydantic, so `curp --help` works without the server's extra installed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curp_chain.errors import CurpError

ENV_PREFIX = "CURP_SERVE_"

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


class ServerSettings(BaseModel):
    """Options of `curp serve`, each also ``CURP_SERVE_<NAME>`` in the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """address to listen on; anything but loopback needs --api-keys"""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port to listen on"""
    api_keys: str | None = None
    """file of API keys, one 'KEY TENANT [remember_turns] [remember_replies]' per line ('#'
    starts a comment); each tenant sees only its own users. Without it the server serves
    one tenant (the store's user ids as they are) and only on loopback"""
    store: str | None = None
    """SQLAlchemy URL of the history store (default: SQLite in $CURP_HOME or the user data
    directory)"""
    checkpoint: str | None = None
    """CURP checkpoint folder (default: the bundled one)"""
    backend: Literal["llamacpp", "hf"] = "llamacpp"
    """LLM backend"""
    model_path: str | None = None
    """GGUF model file (default: SmolLM2-135M-Instruct)"""
    model_name: str = Field(default="curp", min_length=1, max_length=128)
    """the model id clients send and /v1/models lists"""
    n_threads: int | None = Field(default=None, ge=1)
    """CPU threads of each llama.cpp worker (default: half the cores, at least one)"""
    workers: int | None = Field(default=None, ge=1)
    """llama.cpp decoding threads, each with its own context (default: as many as the
    cores hold at --n-threads each)"""
    slots: int = Field(default=4, ge=1, le=256)
    """requests generating at once (each in its own KV-cache sequence)"""
    max_queued: int = Field(default=32, ge=0)
    """requests waiting for a slot; one more gets 429 with Retry-After"""
    context_length: int = Field(default=4096, ge=256)
    """tokens of context per request (prompt, soft tokens and reply)"""
    request_timeout: float = Field(default=300.0, gt=0)
    """seconds a chat request may take, waiting for a slot included; past it 504 (or an
    error event in a stream that has begun)"""
    default_max_tokens: int = Field(default=256, ge=1)
    """reply length when a request sets no max_tokens"""
    max_tokens_limit: int = Field(default=2048, ge=1)
    """largest max_tokens a request may ask for; more gets 400"""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """largest request body; more gets 413"""
    max_items_per_request: int = Field(default=256, ge=1)
    """most history items one POST may add; more gets 400 (split the batch)"""
    max_history_limit: int = Field(default=1000, ge=1)
    """most history items one GET may return (its ?limit=)"""
    remember_turns: bool = False
    """store each answered user message in that user's history (per key and per request
    too)"""
    remember_replies: bool = False
    """with remember_turns: store the replies too"""
    shutdown_timeout: int = Field(default=20, ge=0)
    """on SIGTERM: seconds in-flight requests may take to finish before they are cancelled"""
    torch_threads: int = Field(default=1, ge=1)
    """torch threads (encoder, user model); 1 keeps a busy machine responsive"""
    root_path: str = ""
    """path prefix a reverse proxy serves the API under (e.g. /curp)"""
    forwarded_allow_ips: str = "127.0.0.1"
    """addresses of reverse proxies whose X-Forwarded-* headers are trusted (comma-separated,
    or '*')"""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """server log level (keys and request bodies are never logged)"""

    @property
    def retry_after(self) -> int:
        """Seconds a 429 or 503 asks a client to wait before it retries."""
        return 1


def env_name(field: str) -> str:
    """The environment variable of a settings field: ``CURP_SERVE_MAX_QUEUED``."""
    return ENV_PREFIX + field.upper()


def settings_from(
    environ: Mapping[str, str], given: Mapping[str, Any] | None = None
) -> ServerSettings:
    """Settings from ``CURP_SERVE_*`` variables, overridden by ``given`` (the command line's
    options); a bad value raises CurpError naming the variable or the option."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in ServerSettings.model_fields:
        raw = environ.get(env_name(name))
        if raw is not None and raw != "":
            values[name], sources[name] = raw, env_name(name)
    for name, value in (given or {}).items():
        values[name], sources[name] = value, "--" + name.replace("_", "-")
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in _ENV_NAMES)
    if unknown:
        raise CurpError(
            f"unknown setting {unknown[0]}; the server reads {', '.join(sorted(_ENV_NAMES))}"
        )
    try:
        return ServerSettings.model_validate(values)
    except ValidationError as error:
        item = error.errors()[0]
        name = str(item["loc"][0]) if item["loc"] else ""
        where = sources.get(name, name)
        raise CurpError(f"{where}: {str(item['msg']).removeprefix('Value error, ')}") from None


_ENV_NAMES = frozenset(env_name(name) for name in ServerSettings.model_fields)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: ServerSettings) -> None:
    """Refuse to serve without keys on anything but loopback: every caller would share one
    tenant's users and their histories."""
    if settings.api_keys is None and not is_loopback(settings.host):
        raise CurpError(
            f"--host {settings.host} without --api-keys would let anyone who reaches the "
            "port read and change every user's history; pass --api-keys FILE (one 'KEY "
            "TENANT' per line), or listen on 127.0.0.1"
        )
