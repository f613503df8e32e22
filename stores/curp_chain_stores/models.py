"""The tables of the history store, as typed SQLAlchemy 2.0 ORM models.

These describe the *current* schema for queries. The DDL that creates it lives in
`curp_chain_stores.migrations`, frozen per schema version, so that changing a model
later cannot silently change what an old migration creates (a test checks they agree).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MAX_KIND_CHARS = 64
CONTENT_HASH_CHARS = 64
"""Hex SHA-256."""
MAX_CODEBOOK_VERSION_CHARS = 64
MAX_CODE = 0xFFFF
"""Codes are stored as uint16, so a codebook may have at most 65,536 entries per subspace."""

ItemId = BigInteger().with_variant(Integer, "sqlite")
"""64-bit ids on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the autoincrementing rowid."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime, stored and returned in UTC on every dialect.

    SQLite has no timezone type and SQLAlchemy drops tzinfo when writing to it, so values
    are converted to UTC before writing and tagged as UTC when read. A naive value is
    taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def as_utc(value: datetime) -> datetime:
    """The same instant in UTC; a naive datetime is read as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def pack_codes(codes: Sequence[int]) -> bytes:
    """Codes as little-endian uint16: 2 bytes per subspace, identical on every platform."""
    return struct.pack(f"<{len(codes)}H", *codes)


def unpack_codes(blob: bytes) -> tuple[int, ...]:
    """Inverse of `pack_codes` (also readable as ``numpy.frombuffer(blob, "<u2")``)."""
    return struct.unpack(f"<{len(blob) // 2}H", blob)


NAMING_CONVENTION = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "ix": "ix_%(table_name)s_%(column_0_name)s",
}
"""Every constraint gets a predictable name, so a later migration can alter or drop it."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UserRow(Base):
    """A user; exists once they have had at least one item stored."""

    __tablename__ = "curp_users"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class HistoryItemRow(Base):
    """One post, message or document a user wrote."""

    __tablename__ = "curp_history_items"
    __table_args__ = (
        # Serves every per-user read: WHERE user_id = ? ORDER BY created_at DESC, id DESC.
        Index("ix_curp_history_items_user_created", "user_id", "created_at", "id"),
        # Serves the rerun of an interrupted ingest: which of these items are stored already?
        Index("ix_curp_history_items_user_hash", "user_id", "content_hash"),
        # AUTOINCREMENT keeps SQLite from reusing the ids of deleted items, so a late
        # save_codes() for a deleted item can never attach codes to someone else's item.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(ItemId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("curp_users.id", ondelete="CASCADE")
    )
    text: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(MAX_KIND_CHARS))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # `metadata` is reserved on declarative classes, hence the attribute name.
    item_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    # `curp_chain.interfaces.history.content_hash` of the item as given (schema v2). Nullable only
    # because SQLite cannot add a NOT NULL column to a filled table; every row has one.
    content_hash: Mapped[str | None] = mapped_column(String(CONTENT_HASH_CHARS), nullable=True)


class ItemCodesRow(Base):
    """The PQ codes of one item under one codebook version: a cache, rebuilt when stale.

    ``codes`` is a LargeBinary of little-endian uint16 rather than JSON or an array column:
    2 bytes per code instead of 2-6 characters, the same bytes on SQLite (BLOB) and
    PostgreSQL (bytea), fixed width so the length gives the number of subspaces, and it
    decodes straight into numpy. Codebooks have at most 65,536 entries per subspace.
    """

    __tablename__ = "curp_item_codes"

    item_id: Mapped[int] = mapped_column(
        ItemId, ForeignKey("curp_history_items.id", ondelete="CASCADE"), primary_key=True
    )
    codebook_version: Mapped[str] = mapped_column(
        String(MAX_CODEBOOK_VERSION_CHARS), primary_key=True
    )
    codes: Mapped[bytes] = mapped_column(LargeBinary)


class SchemaVersionRow(Base):
    """The single row recording which migrations `setup()` has applied."""

    __tablename__ = "curp_schema_version"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(Integer)
