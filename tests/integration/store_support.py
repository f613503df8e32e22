"""Databases for the store tests: in-memory SQLite, a SQLite file, and PostgreSQL.

PostgreSQL tests use CURP_TEST_POSTGRES_URL (default: the CI server at 127.0.0.1:5432),
each in a fresh schema dropped afterwards; they are skipped only if the server is
unreachable, and the skip reason says why. The fixtures are in conftest.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache

from sqlalchemy import create_engine, func, select

from curp_chain_stores import SQLHistoryStore
from curp_chain_stores.models import Base

POSTGRES_URL = os.environ.get(
    "CURP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@cache
def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used, or None if it can."""
    try:
        engine = create_engine(POSTGRES_URL)
    except Exception as exc:  # a missing driver counts as unreachable too
        return f"cannot create an engine for {POSTGRES_URL}: {exc}"
    try:
        with engine.connect() as connection:
            connection.execute(select(1))
    except Exception as exc:
        return f"PostgreSQL at {engine.url.render_as_string(hide_password=True)}: {exc}"
    finally:
        engine.dispose()
    return None


@dataclass
class Database:
    """An empty database for one test, on which the test may open several stores."""

    kind: str
    url: str
    stores: list[SQLHistoryStore] = field(default_factory=list)

    def open(self) -> SQLHistoryStore:
        if self.kind == "sqlite-memory" and self.stores:
            # An in-memory database lives on its engine's one connection: share the engine.
            store = SQLHistoryStore(self.stores[0].engine)
        else:
            store = SQLHistoryStore(self.url)
        self.stores.append(store)
        return store

    def close(self) -> None:
        for store in reversed(self.stores):
            store.close()


def count_rows(store: SQLHistoryStore, table: str) -> int:
    """Rows in a table, counted directly, bypassing the store's API."""
    with store.engine.connect() as connection:
        count = connection.scalar(select(func.count()).select_from(Base.metadata.tables[table]))
    return int(count or 0)
