"""Versioned schema migrations, applied by `SQLHistoryStore.setup()`.

Each migration is a function of a connection, frozen once released: it spells out its own
tables instead of reusing the ORM models, so that a model changed for version N+1 cannot
change what version N creates. To change the schema, append ``(N+1, function)`` to
`MIGRATIONS` and update `models.py` to match (tests compare the two).

All migrations run in one transaction that first takes a lock (PostgreSQL advisory lock,
SQLite BEGIN IMMEDIATE), so two processes calling `setup()` at once do not race: the second
waits, then finds the schema current and does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)

from curp_chain.errors import StoreError
from curp_chain_stores.models import NAMING_CONVENTION, Base, ItemId, UTCDateTime

logger = logging.getLogger(__name__)

_ADVISORY_LOCK_KEY = 0x6375_7270_5F73_6368
"""Arbitrary constant ("curp_sch") naming the PostgreSQL advisory lock held during setup."""


def _create_v1(connection: Connection) -> None:
    """Users, their history items, and per-codebook-version item codes."""
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    Table(
        "curp_users",
        metadata,
        Column("id", String(255), primary_key=True),
        Column("created_at", UTCDateTime(), nullable=False),
    )
    Table(
        "curp_history_items",
        metadata,
        Column("id", ItemId, primary_key=True, autoincrement=True),
        Column(
            "user_id",
            String(255),
            ForeignKey("curp_users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column("text", Text, nullable=False),
        Column("kind", String(64), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("metadata", JSON, nullable=False),
        Index("ix_curp_history_items_user_created", "user_id", "created_at", "id"),
        sqlite_autoincrement=True,
    )
    Table(
        "curp_item_codes",
        metadata,
        Column(
            "item_id",
            ItemId,
            ForeignKey("curp_history_items.id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column("codebook_version", String(64), nullable=False),
        Column("codes", LargeBinary, nullable=False),
        PrimaryKeyConstraint("item_id", "codebook_version"),
    )
    metadata.create_all(connection)


Migration = Callable[[Connection], None]

MIGRATIONS: tuple[tuple[int, Migration], ...] = ((1, _create_v1),)
"""Ordered by version; version N's function turns a version N-1 schema into version N."""

SCHEMA_VERSION = MIGRATIONS[-1][0]

_version_table = Base.metadata.tables["curp_schema_version"]


def _schema_version_table(connection: Connection) -> None:
    """The bookkeeping table; its shape never changes, so it is created from the model."""
    _version_table.create(connection, checkfirst=True)


def migrate(connection: Connection) -> tuple[int, int]:
    """Bring the schema to `SCHEMA_VERSION` in the caller's transaction: (old, new) version."""
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(_ADVISORY_LOCK_KEY)))
    _schema_version_table(connection)
    found = connection.scalar(select(_version_table.c.version))
    current = found or 0
    if current > SCHEMA_VERSION:
        raise StoreError(too_new_message(current))
    for version, step in MIGRATIONS:
        if version > current:
            logger.info("history store: migrating schema to version %d", version)
            step(connection)
    if found is None:
        connection.execute(insert(_version_table).values(id=1, version=SCHEMA_VERSION))
    elif current != SCHEMA_VERSION:
        connection.execute(update(_version_table).values(version=SCHEMA_VERSION))
    return current, SCHEMA_VERSION


def too_new_message(found: int) -> str:
    return (
        f"the database has history-store schema version {found}, newer than the "
        f"{SCHEMA_VERSION} this curp-chain-stores supports; upgrade curp-chain-stores"
    )
