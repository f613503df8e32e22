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
    bindparam,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)

from curp_chain.errors import StoreError
from curp_chain.interfaces.history import NewHistoryItem, content_hash
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


_BACKFILL_CHUNK = 1000


def _add_content_hash_v2(connection: Connection) -> None:
    """Per-item content hash (and its index), so a rerun of an ingest skips stored items.

    Rows stored under v1 get the hash of what was stored; their ``created_at`` is hashed as
    stored, since v1 did not record whether it was given or filled in.
    """
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    items = Table(
        "curp_history_items",
        metadata,
        Column("id", ItemId, primary_key=True),
        Column("user_id", String(255)),
        Column("text", Text),
        Column("kind", String(64)),
        Column("created_at", UTCDateTime()),
        Column("metadata", JSON),
        Column("content_hash", String(64), nullable=True),
    )
    column = items.c.content_hash
    inspector = inspect(connection)
    # Each step is skipped if already done, so tables whose version row was lost can be
    # brought to v2 from wherever they are.
    if "content_hash" not in {c["name"] for c in inspector.get_columns(items.name)}:
        # Constant DDL, valid on SQLite and PostgreSQL alike.
        connection.execute(
            text("ALTER TABLE curp_history_items ADD COLUMN content_hash VARCHAR(64)")
        )
    last = None
    while True:
        query = select(items).where(column.is_(None)).order_by(items.c.id).limit(_BACKFILL_CHUNK)
        rows = connection.execute(query if last is None else query.where(items.c.id > last)).all()
        if not rows:
            break
        hashes = [
            {
                "row_id": row.id,
                "row_hash": content_hash(
                    NewHistoryItem(row.text, row.kind, row.created_at, row.metadata)
                ),
            }
            for row in rows
        ]
        fill = update(items).where(items.c.id == bindparam("row_id"))
        connection.execute(fill.values(content_hash=bindparam("row_hash")), hashes)
        last = rows[-1].id
    index = Index("ix_curp_history_items_user_hash", items.c.user_id, column)
    index.create(connection, checkfirst=True)


Migration = Callable[[Connection], None]

MIGRATIONS: tuple[tuple[int, Migration], ...] = ((1, _create_v1), (2, _add_content_hash_v2))
"""Ordered by version; version N's function turns a version N-1 schema into version N."""

SCHEMA_VERSION = MIGRATIONS[-1][0]

_version_table = Base.metadata.tables["curp_schema_version"]


def _schema_version_table(connection: Connection) -> None:
    """The bookkeeping table; its shape never changes, so it is created from the model."""
    _version_table.create(connection, checkfirst=True)


def migrate(connection: Connection) -> tuple[int, int]:
    """Bring the schema to `SCHEMA_VERSION` in the caller's transaction: (old, new) version.

    Ends by comparing the live schema with the models; any difference raises StoreError
    naming it, and the transaction (migrations included) rolls back.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(_ADVISORY_LOCK_KEY)))
    _schema_version_table(connection)
    found = connection.scalar(select(_version_table.c.version))
    current = _infer_version(connection) if found is None else found
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
    differences = schema_differences(connection)
    if differences:
        raise StoreError(
            f"the history tables differ from schema version {SCHEMA_VERSION}: "
            + "; ".join(differences)
            + ". Nothing was changed; repair or move these tables, then call setup() again"
        )
    return current, SCHEMA_VERSION


def _infer_version(connection: Connection) -> int:
    """The version of tables found without a version row (e.g. the row was deleted by hand
    or a copy missed that table): 0 if there are none, else judged by their columns."""
    inspector = inspect(connection)
    if not inspector.has_table("curp_history_items"):
        return 0
    columns = {column["name"] for column in inspector.get_columns("curp_history_items")}
    version = 2 if "content_hash" in columns else 1
    logger.warning(
        "history store: tables found without a schema version row; they look like "
        "version %d, and are checked against it",
        version,
    )
    return version


def schema_differences(connection: Connection) -> list[str]:
    """What the live schema lacks or has beyond the models: tables, columns (and whether
    they take NULL), primary keys, indexes and foreign keys."""
    inspector = inspect(connection)
    problems: list[str] = []
    for name, table in Base.metadata.tables.items():
        if not inspector.has_table(name):
            problems.append(f"table {name} is missing")
            continue
        live_columns = {c["name"]: c["nullable"] for c in inspector.get_columns(name)}
        model_columns = {c.name: c.nullable for c in table.columns}
        for column in sorted(model_columns.keys() - live_columns.keys()):
            problems.append(f"{name}.{column} is missing")
        for column in sorted(live_columns.keys() - model_columns.keys()):
            problems.append(f"{name}.{column} is not in the models")
        for column in sorted(model_columns.keys() & live_columns.keys()):
            if bool(model_columns[column]) != bool(live_columns[column]):
                wanted = "allow" if model_columns[column] else "refuse"
                problems.append(f"{name}.{column} should {wanted} NULL")
        live_pk = inspector.get_pk_constraint(name)["constrained_columns"]
        if list(live_pk) != [c.name for c in table.primary_key.columns]:
            problems.append(f"{name} has primary key {live_pk}")
        live_indexes = {i["name"]: list(i["column_names"]) for i in inspector.get_indexes(name)}
        for index in table.indexes:
            columns = [c.name for c in index.columns]
            if live_indexes.get(str(index.name)) != columns:
                problems.append(f"index {index.name} on {name}{columns} is missing or differs")
        live_fks = {
            (tuple(fk["constrained_columns"]), fk["referred_table"])
            for fk in inspector.get_foreign_keys(name)
        }
        for fk in table.foreign_keys:
            if ((fk.parent.name,), fk.column.table.name) not in live_fks:
                problems.append(f"foreign key {name}.{fk.parent.name} is missing")
    return problems


def too_new_message(found: int) -> str:
    return (
        f"the database has history-store schema version {found}, newer than the "
        f"{SCHEMA_VERSION} this curp-chain-stores supports; upgrade curp-chain-stores"
    )
