"""API keys, the tenants they belong to, and the user ids a tenant's users have in the store.

A keys file holds one ``KEY TENANT [remember_turns] [remember_replies]`` per line (``#``
starts a comment). A request's key is compared with every known key in constant time (a
SHA-256 of each side, ``hmac.compare_digest``, no early exit), so neither its content nor
which key matched shows in the response time; keys are never logged or echoed.

A tenant's user ``alice`` is ``TENANT:alice`` in the store: tenant names cannot hold ``:``,
so no two (tenant, user) pairs meet as one stored id, and no request of one tenant can
name another tenant's user. HTTP clients never see the prefix. Without a keys file the
server has one tenant whose users are the store's ids as they are (`curp ingest`, the
Python API and the server then share users).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from curp_chain.errors import CurpError, InvalidUserIdError
from curp_chain.interfaces.history import MAX_USER_ID_CHARS, validate_user_id

TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
"""Tenant names: lowercase ASCII letters, digits, ``_`` and ``-``, at most 63 characters,
starting with a letter or digit."""

MIN_KEY_CHARS = 16
"""Shortest API key accepted: guessable keys are refused when the file is read."""

KEY_OPTIONS = ("remember_turns", "remember_replies")


@dataclass(frozen=True)
class Tenant:
    """Who a request acts for, and the defaults its key sets."""

    name: str | None
    """The tenant's name; None for the single tenant of a server without keys."""
    remember_turns: bool | None = None
    """Store each answered user message (None: the server's setting)."""
    remember_replies: bool | None = None
    """With remember_turns: store the replies too (None: the server's setting)."""

    def store_id(self, user_id: object) -> str:
        """The id the store knows this tenant's user by; InvalidUserIdError for an id
        that breaks the user id policy or does not fit beside the tenant's prefix."""
        user = validate_user_id(user_id)
        if self.name is None:
            return user
        scoped = f"{self.name}:{user}"
        if len(scoped) > MAX_USER_ID_CHARS:
            limit = MAX_USER_ID_CHARS - len(self.name) - 1
            raise InvalidUserIdError(
                f"user id is {len(user)} characters long; the limit for this API key's "
                f"tenant is {limit}"
            )
        return scoped


LOCAL_TENANT = Tenant(None)
"""The one tenant of a server without keys."""


class KeyRing:
    """The API keys of a server and their tenants."""

    def __init__(self, keys: dict[str, Tenant]):
        if not keys:
            raise CurpError("the API keys file holds no keys; add lines 'KEY TENANT'")
        self._entries = [(_digest(key), tenant) for key, tenant in keys.items()]

    @property
    def tenants(self) -> list[str]:
        return sorted({t.name for _, t in self._entries if t.name is not None})

    def tenant_for(self, key: str) -> Tenant | None:
        """The tenant of ``key``, or None; every known key is compared, in constant time."""
        presented = _digest(key)
        found = None
        for digest, tenant in self._entries:
            if hmac.compare_digest(presented, digest):
                found = tenant
        return found

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        """Read a keys file; CurpError naming the line (never the key) for a bad one."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise CurpError(f"cannot read the API keys file {path}: {error.strerror}") from None
        keys: dict[str, Tenant] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            key, tenant = _parse_line(fields, f"{path}:{number}")
            if key in keys:
                raise CurpError(f"{path}:{number}: this key is already on an earlier line")
            keys[key] = tenant
        return cls(keys)


def _parse_line(fields: list[str], where: str) -> tuple[str, Tenant]:
    if len(fields) < 2:
        raise CurpError(f"{where}: expected 'KEY TENANT [remember_turns] [remember_replies]'")
    key, name, *options = fields
    if len(key) < MIN_KEY_CHARS:
        raise CurpError(
            f"{where}: the key is shorter than {MIN_KEY_CHARS} characters; use a random one, "
            "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if not TENANT_PATTERN.match(name):
        raise CurpError(
            f"{where}: tenant {name!r} must be lowercase letters, digits, '_' or '-' "
            "(at most 63, starting with a letter or digit)"
        )
    unknown = [o for o in options if o not in KEY_OPTIONS]
    if unknown:
        raise CurpError(f"{where}: unknown option {unknown[0]!r}; use {' or '.join(KEY_OPTIONS)}")
    tenant = Tenant(
        name,
        remember_turns=True if "remember_turns" in options else None,
        remember_replies=True if "remember_replies" in options else None,
    )
    return key, tenant


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).digest()
