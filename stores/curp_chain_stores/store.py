"""`SQLHistoryStore`: the `curp_chain.interfaces.protocols.HistoryStore` on SQLite or PostgreSQL."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar, TypeVarTuple

from sqlalchemy import Connection, Engine, Select, and_, bindparam, delete, func, inspect, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from curp_chain.errors import InvalidHistoryItemError, StoreError
from curp_chain.interfaces.history import (
    HistoryItem,
    ItemCodes,
    NewHistoryItem,
    UserCodes,
    UserSummary,
    content_hash,
)
from curp_chain_stores import validation
from curp_chain_stores.engine import (
    BUSY_BACKOFF_S,
    BUSY_RETRIES,
    WRITE_OPTION,
    is_busy,
    make_engine,
)
from curp_chain_stores.migrations import SCHEMA_VERSION, migrate, too_new_message
from curp_chain_stores.models import (
    HistoryItemRow,
    ItemCodesRow,
    SchemaVersionRow,
    UserRow,
    as_utc,
    pack_codes,
    unpack_codes,
)

logger = logging.getLogger(__name__)

Row = TypeVarTuple("Row")
"""The column types of a select, kept through `_newest`."""
Key = TypeVar("Key")
Result = TypeVar("Result")

RECONNECT_WAIT_S = 10.0
"""How long a call waits for a database whose connection dropped (a restart, a failover)
to accept connections again before it retries once; past it, StoreError."""

_USER_ATTEMPTS = 5
"""Times add_items recreates a user deleted under it before giving up."""

_CHUNK = 500
"""Ids per IN (...) list: far below SQLite's and PostgreSQL's bound-parameter limits."""


class SQLHistoryStore:
    """Users' history items and their cached PQ codes, in SQLite or PostgreSQL.

    Setup:
        pip install curp-chain-stores            # SQLite
        pip install 'curp-chain-stores[postgres]'

    Instantiate (no connection is made and no table created until used):
        store = SQLHistoryStore(default_sqlite_url())
        store = SQLHistoryStore("postgresql+psycopg://user@localhost/app")
        store.setup()   # once per database, at deploy time; safe to repeat

    Use:
        store.add_items("ana", ["first post", NewHistoryItem("a mail", kind="email")])
        store.get_items("ana", limit=50)         # newest first

    Every public method is one transaction: it happens whole or not at all. Errors from
    the database are raised as `StoreError`, naming the URL without its password.
    ``sqlite://`` is an in-memory database on one shared connection: for tests and single
    threads only. A SQLite `Engine` passed in should be fresh, so that every connection it
    opens gets foreign keys turned on.

    A database server that restarts fails no call: pooled connections are checked before
    use (an engine built from a URL pings them), and when a connection drops anyway, a call
    that has not begun its work, or a read that has, waits up to ``reconnect_wait`` seconds
    for the server to answer and runs once more. A write whose connection drops half-way is
    not repeated (it may have committed) and raises StoreError.
    """

    def __init__(
        self,
        url_or_engine: str | Engine,
        *,
        echo: bool = False,
        reconnect_wait: float = RECONNECT_WAIT_S,
    ) -> None:
        """Build the engine only; ``echo`` logs SQL and applies to an engine built from a URL;
        ``reconnect_wait`` bounds the wait for a database whose connection dropped (0: no
        retry)."""
        self._engine, self._owns_engine = make_engine(url_or_engine, echo=echo)
        self._reconnect_wait = reconnect_wait
        # Only a database that answered once is waited for: a wrong URL fails at once.
        self._connected = False
        self._url = self._engine.url.render_as_string(hide_password=True)
        self._read_session = sessionmaker(self._engine, expire_on_commit=False)
        self._write_session = sessionmaker(
            self._engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )
        self._schema_checked = False
        # A StaticPool engine (in-memory SQLite) has one connection for every thread: its
        # transactions must take turns, or SQLite refuses to nest them.
        self._one_at_a_time: AbstractContextManager[Any] = (
            threading.RLock() if isinstance(self._engine.pool, StaticPool) else nullcontext()
        )

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for inspection or for sharing an in-memory database."""
        return self._engine

    def __repr__(self) -> str:
        return f"SQLHistoryStore({self._url!r})"

    def setup(self) -> None:
        """Create the tables or migrate them to the current schema version. Idempotent."""
        try:
            with self._engine.execution_options(**{WRITE_OPTION: True}).begin() as connection:
                migrate(connection)
        except SQLAlchemyError as exc:
            raise self._error("setup", exc) from exc
        self._schema_checked = True

    def add_items(
        self,
        user_id: str,
        items: Sequence[NewHistoryItem | str],
        codes: Sequence[Sequence[int]] | None = None,
        codebook_version: str | None = None,
        *,
        replacing: Sequence[int] = (),
    ) -> list[HistoryItem]:
        """Store a batch of items (and their codes) for a user, creating the user if new.

        Everything is checked before the database is touched; a batch is stored whole or
        not at all. A plain string is an item of kind "text". Items without ``created_at``
        get the time of this call; a naive ``created_at`` is taken to be UTC. The user's
        items with ids in ``replacing`` are deleted in the same transaction (ids of no item
        or of another user's item are ignored), so a replacement is never half done.
        """
        user_id = validation.check_user_id(user_id)
        batch = validation.check_items(items)
        batch_codes, version = validation.check_batch_codes(len(batch), codes, codebook_version)
        replaced = validation.check_item_ids(replacing)
        now = datetime.now(UTC)
        rows = [
            HistoryItemRow(
                user_id=user_id,
                text=item.text,
                kind=item.kind,
                created_at=now if item.created_at is None else as_utc(item.created_at),
                item_metadata=dict(item.metadata),
                content_hash=content_hash(item),
            )
            for item in batch
        ]
        with self._transaction("add_items", write=True) as session:
            self._hold_user(session, user_id, now)
            _delete_items(session, user_id, replaced)
            session.add_all(rows)
            session.flush()
            if batch_codes is not None and version is not None:
                session.add_all(
                    ItemCodesRow(item_id=row.id, codebook_version=version, codes=pack_codes(c))
                    for row, c in zip(rows, batch_codes, strict=True)
                )
            return [_item(row) for row in rows]

    def get_items(
        self, user_id: str, limit: int | None = None, *, kind: str | None = None
    ) -> list[HistoryItem]:
        """The user's items (only those of ``kind``, if given), newest first; an unknown
        user has none."""
        user_id = validation.check_user_id(user_id)
        limit = validation.check_limit(limit)
        kind = validation.check_kind(kind)
        query = select(HistoryItemRow)
        if kind is not None:
            query = query.where(HistoryItemRow.kind == kind)
        query = _newest(query, user_id, limit)
        return self._read("get_items", lambda session: [_item(r) for r in session.scalars(query)])

    def count_by_hash(self, user_id: str, hashes: Sequence[str]) -> dict[str, int]:
        """How many of the user's stored items have each content hash (absent: none).

        `curp_chain.interfaces.history.content_hash` gives an item's hash; a rerun of an interrupted
        ingest uses this to skip what an earlier run already stored.
        """
        user_id = validation.check_user_id(user_id)
        wanted = sorted({h for h in hashes if isinstance(h, str)})

        def count(session: Session) -> dict[str, int]:
            counts: dict[str, int] = {}
            for chunk in _chunks(wanted):
                query = (
                    select(HistoryItemRow.content_hash, func.count())
                    .where(
                        HistoryItemRow.user_id == user_id,
                        HistoryItemRow.content_hash.in_(chunk),
                    )
                    .group_by(HistoryItemRow.content_hash)
                )
                counts.update({str(h): int(n) for h, n in session.execute(query)})
            return counts

        return self._read("count_by_hash", count)

    def get_codes(self, user_id: str, codebook_version: str, limit: int | None = None) -> UserCodes:
        """Of the newest ``limit`` items: cached codes for ``codebook_version``, and the rest."""
        user_id = validation.check_user_id(user_id)
        version = validation.check_codebook_version(codebook_version)
        limit = validation.check_limit(limit)
        # Runs on every request: only ids and code blobs, as plain rows (no ORM objects, no
        # text or JSON metadata). Whole items are read only for those lacking codes.
        query, params = _CODES, {"user_id": user_id, "version": version, "limit": limit}
        if limit is None:
            query, params = _ALL_CODES, {"user_id": user_id, "version": version}

        def read(connection: Connection) -> UserCodes:
            rows = connection.execute(query, params).all()
            encoded = [
                ItemCodes(item_id, unpack_codes(blob)) for item_id, blob in rows if blob is not None
            ]
            missing = [item_id for item_id, blob in rows if blob is None]
            stale = _items_by_id(connection, missing) if missing else []
            return UserCodes(encoded=encoded, stale=stale)

        return self._read("get_codes", read, plain=True)

    def save_codes(self, codes: Mapping[int, Sequence[int]], codebook_version: str) -> set[int]:
        """Cache codes for existing items, replacing any for the same codebook version.

        Returns the ids saved. Ids of items that no longer exist (their user was deleted
        meanwhile) are skipped: the codes of a forgotten item have nowhere to go.
        """
        version = validation.check_codebook_version(codebook_version)
        for item_id in codes:
            if not isinstance(item_id, int) or isinstance(item_id, bool):
                raise InvalidHistoryItemError(f"item ids must be ints, got {item_id!r}")
        checked = validation.check_codes(codes.items())
        if not checked:
            return set()
        ids = sorted(checked)
        with self._transaction("save_codes", write=True) as session:
            found: set[int] = set()
            for chunk in _chunks(ids):
                # Delete, then insert: an upsert that reads the same on every dialect. Locking
                # the items first (in id order, so two calls cannot deadlock) makes concurrent
                # save_codes of one item take turns, and a concurrent delete_user wait.
                found.update(
                    session.scalars(
                        select(HistoryItemRow.id)
                        .where(HistoryItemRow.id.in_(chunk))
                        .order_by(HistoryItemRow.id)
                        .with_for_update()
                    )
                )
                session.execute(
                    delete(ItemCodesRow).where(
                        ItemCodesRow.codebook_version == version, ItemCodesRow.item_id.in_(chunk)
                    )
                )
            session.add_all(
                ItemCodesRow(item_id=item_id, codebook_version=version, codes=pack_codes(c))
                for item_id, c in checked.items()
                if item_id in found
            )
        if len(found) < len(ids):
            logger.debug("save_codes: %d items were deleted meanwhile", len(ids) - len(found))
        return found

    def list_users(self) -> list[UserSummary]:
        """Every user with their number of items and newest item time, by user id."""
        query = (
            select(UserRow.id, func.count(HistoryItemRow.id), func.max(HistoryItemRow.created_at))
            .outerjoin(HistoryItemRow, HistoryItemRow.user_id == UserRow.id)
            .group_by(UserRow.id)
            .order_by(UserRow.id)
        )
        return self._read(
            "list_users",
            lambda session: [
                UserSummary(user_id, n_items, None if last is None else as_utc(last))
                for user_id, n_items, last in session.execute(query)
            ],
        )

    def delete_user(self, user_id: str) -> int:
        """Remove the user, their items and codes; returns the number of items removed."""
        user_id = validation.check_user_id(user_id)
        with self._transaction("delete_user", write=True) as session:
            # Locking the user row holds off concurrent add_items (their foreign-key check
            # waits for it), so the count is exactly what the cascade removes.
            locked = select(UserRow.id).where(UserRow.id == user_id).with_for_update()
            if session.scalar(locked) is None:
                return 0
            removed = session.scalar(_count(user_id)) or 0
            # Items and codes go by ON DELETE CASCADE, in the same statement.
            session.execute(delete(UserRow).where(UserRow.id == user_id))
            return removed

    def delete_items(self, user_id: str, item_ids: Sequence[int]) -> int:
        """Remove these items of the user and their codes; returns how many were removed.

        Ids of no item or of another user's item are ignored. The user stays, even with no
        items left (`delete_user` removes the user).
        """
        user_id = validation.check_user_id(user_id)
        ids = validation.check_item_ids(item_ids)
        if not ids:
            return 0
        with self._transaction("delete_items", write=True) as session:
            return _delete_items(session, user_id, ids)

    def count_items(self, user_id: str) -> int:
        user_id = validation.check_user_id(user_id)
        return self._read("count_items", lambda session: session.scalar(_count(user_id)) or 0)

    def close(self) -> None:
        """Close pooled connections; an engine passed in by the caller is left to them."""
        if self._owns_engine:
            self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self, action: str, *, write: bool = False) -> Iterator[Session]:
        """One session and transaction: committed on success, rolled back on any error. A
        connection that fails while the transaction begins is retried once the database
        answers again (nothing was done in it yet)."""
        factory = self._write_session if write else self._read_session
        try:
            with self._one_at_a_time, _begin(factory, self._reconnected) as session:
                self._connected = True
                self._check_schema(session.connection())
                yield session
        except SQLAlchemyError as exc:
            raise self._error(action, exc) from exc

    def _read(self, action: str, work: Callable[[Any], Result], *, plain: bool = False) -> Result:
        """``work(session)`` in a read transaction (``work(connection)`` with ``plain``: a
        plain connection, for the read every request makes, where an ORM Session's
        bookkeeping cost ten times the query itself on SQLite). A read whose connection
        drops, before or during its work, runs once more when the database answers again:
        it changes nothing, so repeating it is safe."""
        retried = False
        while True:
            began = False
            opened: AbstractContextManager[Connection | Session] = (
                _begin_read(self._engine) if plain else _begin(self._read_session)
            )
            try:
                with self._one_at_a_time, opened as handle:
                    began = self._connected = True
                    connection = handle if isinstance(handle, Connection) else handle.connection()
                    self._check_schema(connection)
                    return work(handle)
            except SQLAlchemyError as exc:
                dropped = not began or (isinstance(exc, DBAPIError) and exc.connection_invalidated)
                if retried or not dropped or not self._reconnected(exc):
                    raise self._error(action, exc) from exc
                retried = True

    def _reconnected(self, exc: SQLAlchemyError) -> bool:
        """After a connection failed with ``exc``: whether the database answers again (waited
        for up to ``reconnect_wait`` seconds), so that the call may run once more. Never for
        SQLite (a file does not drop connections) or a database that never answered."""
        if not self._connected or self._reconnect_wait <= 0:
            return False
        if self._engine.dialect.name == "sqlite" or not isinstance(exc, DBAPIError):
            return False
        logger.warning(
            "history store connection lost (%s); waiting for %s", _first_line(exc), self._url
        )
        deadline = time.monotonic() + self._reconnect_wait
        delay = 0.05
        while True:
            try:
                with self._engine.connect() as connection:
                    connection.exec_driver_sql("SELECT 1")
                return True
            except SQLAlchemyError:
                if time.monotonic() + delay > deadline:
                    return False
                time.sleep(delay)
                delay = min(2 * delay, 1.0)

    def _check_schema(self, connection: Connection) -> None:
        """Once per store: tables exist at this version, else say what to do."""
        if self._schema_checked:
            return
        found = None
        if inspect(connection).has_table(SchemaVersionRow.__tablename__):
            found = connection.scalar(select(SchemaVersionRow.version))
        if found is None:
            if inspect(connection).has_table(HistoryItemRow.__tablename__):
                raise StoreError(
                    f"the history tables in {self._url} have no schema version row: call "
                    "store.setup(), which checks them against the current schema and records "
                    "the version"
                )
            raise StoreError(f"no history tables in {self._url}: call store.setup() first")
        if found > SCHEMA_VERSION:
            raise StoreError(too_new_message(found))
        if found < SCHEMA_VERSION:
            raise StoreError(
                f"the history tables in {self._url} are at schema version {found}, this "
                f"code needs {SCHEMA_VERSION}: call store.setup() to migrate them"
            )
        self._schema_checked = True

    def _hold_user(self, session: Session, user_id: str, now: datetime) -> None:
        """Make sure the user row exists and stays until this transaction ends.

        A concurrent `delete_user` either finishes first (its row is gone; the user is
        created again and the items stored for them) or waits for this transaction (and
        then removes these items too). Never a foreign-key violation half-way.
        """
        held = select(UserRow.id).where(UserRow.id == user_id).with_for_update(key_share=True)
        for _ in range(_USER_ATTEMPTS):
            self._ensure_user(session, user_id, now)
            # On PostgreSQL this waits for a delete in progress; under READ COMMITTED it
            # then sees the row gone. SQLite writers never overlap (BEGIN IMMEDIATE).
            if session.scalar(held) is not None:
                return
            if session.get_bind().dialect.name == "postgresql":
                # Lost a race with a delete: an upsert that updates is atomic there (it
                # inserts, or updates and so locks the row), however often deletes repeat.
                _upsert_and_lock_user(session, user_id, now)
                return
        raise StoreError(
            f"add_items: user {user_id!r} was deleted {_USER_ATTEMPTS} times while being "
            "written; nothing stored"
        )

    def _ensure_user(self, session: Session, user_id: str, now: datetime) -> None:
        """Insert the user row unless it exists, without racing a concurrent insert."""
        dialect = session.get_bind().dialect.name
        if dialect in ("sqlite", "postgresql"):
            make_insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
            session.execute(
                make_insert(UserRow)
                .values(id=user_id, created_at=now)
                .on_conflict_do_nothing(index_elements=[UserRow.id])
            )
        elif session.get(UserRow, user_id) is None:
            session.add(UserRow(id=user_id, created_at=now))

    def _error(self, action: str, exc: SQLAlchemyError) -> StoreError:
        """A StoreError naming the call, the URL (no password) and the driver's first line."""
        return StoreError(f"{action} failed on {self._url}: {_first_line(exc)}")


def _first_line(exc: SQLAlchemyError) -> str:
    """The driver's first line of an error (its later lines may quote SQL and parameters)."""
    reason = str(exc.orig if isinstance(exc, DBAPIError) else exc).strip()
    return reason.splitlines()[0] if reason else type(exc).__name__


def _upsert_and_lock_user(session: Session, user_id: str, now: datetime) -> None:
    """Insert the user row, or touch it and so hold its row lock until the transaction ends."""
    upsert = postgresql.insert(UserRow).values(id=user_id, created_at=now)
    session.execute(
        upsert.on_conflict_do_update(
            index_elements=[UserRow.id], set_={"created_at": UserRow.created_at}
        )
    )


Reconnect = Callable[[SQLAlchemyError], bool]
"""Called when a connection fails while a transaction begins: True to try once more."""


@contextmanager
def _begin(factory: sessionmaker[Session], reconnect: Reconnect | None = None) -> Iterator[Session]:
    """A session whose transaction has begun, retrying a busy SQLite database.

    BEGIN (IMMEDIATE for writers) runs here, before the caller's work: it is where a SQLite
    writer waits for the write lock, first for the busy timeout set on every connection,
    then again after a backoff, up to `BUSY_RETRIES` times (about 45 s in all). Nothing has
    been done in the transaction yet, so a retry repeats nothing; the same holds for a
    connection that fails here (a database restarting), retried once when ``reconnect``
    says the database answers again.
    """
    session, transaction = _open_begun(factory, _begin_session, reconnect)
    with session, transaction:
        yield session


def _begin_session(session: Session) -> Any:
    transaction = session.begin()
    session.connection()  # a session begins lazily: this runs BEGIN now
    return transaction


Handle = TypeVar("Handle", Session, Connection)


def _open_begun(
    open_handle: Callable[[], Handle],
    begin: Callable[[Handle], Any],
    reconnect: Reconnect | None = None,
) -> tuple[Handle, Any]:
    """A new handle and the transaction ``begin`` began on it, retrying a busy SQLite
    database with backoff and a dropped connection once (see `_begin`); the handle of a
    failed attempt is closed."""
    busy_attempts = 0
    reconnected = False
    while True:
        handle = open_handle()
        try:
            return handle, begin(handle)
        except DBAPIError as exc:
            handle.close()
            if isinstance(exc, OperationalError) and is_busy(exc):
                if busy_attempts == BUSY_RETRIES:
                    raise
                delay = BUSY_BACKOFF_S * 2**busy_attempts
                logger.info("history store busy; retrying in %.1f s", delay)
                time.sleep(delay)
                busy_attempts += 1
            elif reconnect is not None and not reconnected and reconnect(exc):
                reconnected = True
            else:
                raise


def _newest(query: Select[*Row], user_id: str, limit: int | None) -> Select[*Row]:
    """Restrict a select over items to one user, newest first, at most ``limit`` rows."""
    query = query.where(HistoryItemRow.user_id == user_id).order_by(
        HistoryItemRow.created_at.desc(), HistoryItemRow.id.desc()
    )
    return query if limit is None else query.limit(limit)


def _delete_items(session: Session, user_id: str, ids: list[int]) -> int:
    """Delete the user's items among ``ids`` (codes go by ON DELETE CASCADE); the count."""
    removed = 0
    for chunk in _chunks(ids):
        # Only ids the statement deletes count: selected first, locked, in id order.
        found = session.scalars(
            select(HistoryItemRow.id)
            .where(HistoryItemRow.user_id == user_id, HistoryItemRow.id.in_(chunk))
            .order_by(HistoryItemRow.id)
            .with_for_update()
        ).all()
        if found:
            session.execute(delete(HistoryItemRow).where(HistoryItemRow.id.in_(found)))
        removed += len(found)
    return removed


_ALL_CODES = (
    select(HistoryItemRow.id, ItemCodesRow.codes)
    .outerjoin(
        ItemCodesRow,
        and_(
            ItemCodesRow.item_id == HistoryItemRow.id,
            ItemCodesRow.codebook_version == bindparam("version"),
        ),
    )
    .where(HistoryItemRow.user_id == bindparam("user_id"))
    .order_by(HistoryItemRow.created_at.desc(), HistoryItemRow.id.desc())
)
_CODES = _ALL_CODES.limit(bindparam("limit"))
"""The newest items' ids and codes (None where the version has none), built once."""


def _items_by_id(connection: Connection, ids: list[int]) -> list[HistoryItem]:
    """Items with these ids, in the order given, leaving out any deleted meanwhile (on
    PostgreSQL each statement of a READ COMMITTED transaction sees its own snapshot)."""
    found: dict[int, HistoryItem] = {}
    for chunk in _chunks(ids):
        query = select(*HistoryItemRow.__table__.columns).where(HistoryItemRow.id.in_(chunk))
        for row in connection.execute(query).mappings():
            found[row["id"]] = HistoryItem(
                id=row["id"],
                user_id=row["user_id"],
                text=row["text"],
                kind=row["kind"],
                created_at=as_utc(row["created_at"]),
                metadata=row["metadata"],
            )
    return [found[item_id] for item_id in ids if item_id in found]


@contextmanager
def _begin_read(engine: Engine) -> Iterator[Connection]:
    """`_begin` for a plain connection: BEGIN, retrying a busy SQLite database."""
    connection, transaction = _open_begun(engine.connect, Connection.begin)
    with connection, transaction:
        yield connection


def _count(user_id: str) -> Select[int]:
    return select(func.count(HistoryItemRow.id)).where(HistoryItemRow.user_id == user_id)


def _item(row: HistoryItemRow) -> HistoryItem:
    return HistoryItem(
        id=row.id,
        user_id=row.user_id,
        text=row.text,
        kind=row.kind,
        created_at=as_utc(row.created_at),
        metadata=row.item_metadata,
    )


def _chunks(ids: list[Key]) -> Iterator[list[Key]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]
