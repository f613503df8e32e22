"""Building the SQLAlchemy engine, and making SQLite behave like a transactional database.

Python's sqlite3 driver (before 3.16) does not BEGIN before SELECT or DDL, so reads are not
repeatable and `setup()` would not be atomic; foreign keys (which the store relies on for
ON DELETE CASCADE) are off by default. The listeners here fix both, following the recipe
in SQLAlchemy's SQLite documentation.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from curp_chain.errors import MissingDependencyError, StoreError

WRITE_OPTION = "curp_write"
"""Execution option marking a read-write transaction: on SQLite it starts with BEGIN
IMMEDIATE, taking the write lock up front instead of failing to upgrade a read lock."""

_WAL_ATTEMPTS = 100

BUSY_TIMEOUT_S = 10.0
"""How long SQLite itself waits for a lock held by another connection (PRAGMA busy_timeout)."""
BUSY_RETRIES = 3
BUSY_BACKOFF_S = 0.5
"""After a busy timeout the store begins the transaction again, up to BUSY_RETRIES times,
sleeping 0.5, 1 and 2 s between: a writer waits about 45 s in all before StoreError."""


def make_engine(url_or_engine: str | Engine, *, echo: bool = False) -> tuple[Engine, bool]:
    """The engine to use and whether the store owns it (and so disposes it on close)."""
    if isinstance(url_or_engine, Engine):
        engine, owned = url_or_engine, False
    else:
        url = _parse_url(url_or_engine)
        kwargs: dict[str, Any] = {}
        if url.get_backend_name() == "sqlite" and _is_memory(url):
            # One shared connection, or each session would see its own empty database.
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        elif url.get_backend_name() != "sqlite":
            # A server's connections die when it restarts; a pooled one is pinged before use
            # (one round trip per checkout) and replaced when dead, instead of failing the call.
            kwargs = {"pool_pre_ping": True}
        try:
            engine = create_engine(url, echo=echo, **kwargs)
        except ModuleNotFoundError as exc:
            raise MissingDependencyError(
                f"the database driver for {url.drivername!r} is not installed ({exc.name}); "
                "for PostgreSQL run: pip install 'curp-chain-stores[postgres]'"
            ) from exc
        except ArgumentError as exc:
            raise StoreError(f"cannot use database URL {_safe(url)}: {exc}") from exc
        owned = True
    if engine.dialect.name == "sqlite" and not event.contains(engine, "connect", _sqlite_connect):
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine, owned


def _parse_url(url: str) -> URL:
    if not isinstance(url, str):
        raise StoreError(
            f"expected a database URL string or an Engine, got {type(url).__name__}; "
            "for a file use 'sqlite:///path/to/history.sqlite'"
        )
    try:
        return make_url(url)
    except ArgumentError:
        # The message must not echo the string: it may hold a password.
        raise StoreError(
            "not a database URL; expected e.g. 'sqlite:///path/to/history.sqlite' or "
            "'postgresql+psycopg://user@host/dbname'"
        ) from None


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def _safe(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _sqlite_connect(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    # Let SQLAlchemy emit BEGIN itself (see _sqlite_begin); PRAGMAs run outside a transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        _use_wal(cursor)
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    """WAL journal for a file database, so readers do not block the writer.

    The mode is stored in the file, so only the first connection ever changes it. Changing
    it needs a moment of exclusive access and SQLite does not wait for that (no busy
    timeout), so a connection opened while another holds a lock retries briefly.
    """
    mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
    if mode in ("wal", "memory"):  # "memory": an in-memory database has no journal file
        return
    for attempt in range(_WAL_ATTEMPTS):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if attempt == _WAL_ATTEMPTS - 1:
                raise
            time.sleep(0.05)


def is_busy(exc: OperationalError) -> bool:
    """Whether a driver error means another connection holds SQLite's lock."""
    message = str(exc.orig).lower()
    return "database is locked" in message or "database is busy" in message


def _sqlite_begin(connection: Any) -> None:
    immediate = connection.get_execution_options().get(WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
