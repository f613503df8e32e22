"""The history store under faults: old and damaged schemas, a busy SQLite, and races with
forget_user, on a SQLite file and PostgreSQL (and in-memory SQLite where it applies)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import JSON, Column, MetaData, String, Table, Text, insert, inspect, text
from store_support import Database, count_rows

from curp_chain.errors import StoreError
from curp_chain.interfaces.history import NewHistoryItem, content_hash
from curp_chain_stores import SQLHistoryStore
from curp_chain_stores.migrations import SCHEMA_VERSION, _create_v1, schema_differences
from curp_chain_stores.models import Base, ItemId, UTCDateTime

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _file_or_postgres(database: Database) -> None:
    if database.kind == "sqlite-memory":
        pytest.skip("needs separate connections")


# --- Schema versions ------------------------------------------------------------------------


def _make_v1(store: SQLHistoryStore, rows: list[dict[str, Any]]) -> None:
    """A version 1 database as curp-chain-stores 0.1 made it: its DDL, its rows."""
    metadata = MetaData()
    users = Table(
        "curp_users", metadata, Column("id", String(255)), Column("created_at", UTCDateTime())
    )
    items = Table(
        "curp_history_items",
        metadata,
        Column("id", ItemId, primary_key=True, autoincrement=True),
        Column("user_id", String(255)),
        Column("text", Text),
        Column("kind", String(64)),
        Column("created_at", UTCDateTime()),
        Column("metadata", JSON),
    )
    with store.engine.begin() as connection:
        _create_v1(connection)
        Base.metadata.tables["curp_schema_version"].create(connection)
        connection.execute(
            insert(Base.metadata.tables["curp_schema_version"]).values(id=1, version=1)
        )
        connection.execute(
            insert(users), [{"id": u, "created_at": T0} for u in {r["user_id"] for r in rows}]
        )
        for row in rows:  # one at a time: ids in insertion order, from the id sequence
            connection.execute(insert(items).values(**row))


V1_ROWS: list[dict[str, Any]] = [
    {"user_id": user, "text": t, "kind": "note", "created_at": T0, "metadata": m}
    for user, t, m in (
        [
            ("ana", "first \U0001f389", {"lang": "en"}),
            ("ana", "second\nline", {}),
            ("bob", "'; DROP TABLE x; --", {"n": [1, {"a": None}]}),
            ("bob", "second\nline", {}),
        ]
    )
]


def test_v1_database_is_upgraded_to_v2_and_nothing_is_lost(database: Database) -> None:
    store = database.open()
    _make_v1(store, V1_ROWS)
    with store.engine.connect() as connection:
        assert "content_hash" not in {
            c["name"] for c in inspect(connection).get_columns("curp_history_items")
        }
    with pytest.raises(StoreError, match=r"schema version 1, this code needs 2"):
        store.get_items("ana")
    store.setup()
    fresh = database.open()
    for user in ("ana", "bob"):
        items = sorted(fresh.get_items(user), key=lambda item: item.id)
        expected = [r for r in V1_ROWS if r["user_id"] == user]
        assert [(i.text, i.kind, i.created_at, dict(i.metadata)) for i in items] == [
            (r["text"], r["kind"], r["created_at"], r["metadata"]) for r in expected
        ]
    # The backfilled hashes are those of the items as stored, so a rerun finds them.
    row = V1_ROWS[2]
    digest = content_hash(
        NewHistoryItem(row["text"], row["kind"], row["created_at"], row["metadata"])
    )
    assert fresh.count_by_hash("bob", [digest, "0" * 64]) == {digest: 1}
    with fresh.engine.connect() as connection:
        assert schema_differences(connection) == []
        version = connection.scalar(text("SELECT version FROM curp_schema_version"))
    assert version == SCHEMA_VERSION == 2
    # New items after the upgrade get a new id, never one of the migrated ones.
    old_ids = {i.id for user in ("ana", "bob") for i in fresh.get_items(user)}
    (new,) = fresh.add_items("ana", ["after"])
    assert len(old_ids) == len(V1_ROWS) and new.id > max(old_ids)


def test_tables_without_a_version_row_are_explained_then_adopted(
    store: SQLHistoryStore, database: Database
) -> None:
    store.add_items("ana", ["kept"])
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM curp_schema_version"))
    fresh = database.open()
    with pytest.raises(StoreError, match="have no schema version row: call store.setup"):
        fresh.get_items("ana")
    fresh.setup()
    assert [i.text for i in fresh.get_items("ana")] == ["kept"]


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ("DROP INDEX ix_curp_history_items_user_hash", "index ix_curp_history_items_user_hash"),
        (
            "ALTER TABLE curp_history_items ADD COLUMN extra TEXT",
            "curp_history_items.extra is not in the models",
        ),
        ("DROP TABLE curp_item_codes", "table curp_item_codes is missing"),
    ],
)
def test_setup_checks_the_live_schema_and_names_what_differs(
    store: SQLHistoryStore,
    database: Database,
    damage: str,
    named: str,
) -> None:
    store.add_items("ana", ["kept"])
    with store.engine.begin() as connection:
        connection.execute(text(damage))
    with pytest.raises(StoreError, match=named):
        database.open().setup()


def test_missing_column_is_named(database: Database) -> None:
    store = database.open()
    _make_v1(store, V1_ROWS[:1])
    with store.engine.begin() as connection:  # a v2 version row on v1 tables
        connection.execute(text("UPDATE curp_schema_version SET version = 2"))
    with pytest.raises(StoreError, match="curp_history_items.content_hash is missing"):
        store.setup()
    assert database.open().engine  # nothing else broken: the data is still there
    with store.engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM curp_history_items")) == 1


# --- Busy SQLite ----------------------------------------------------------------------------


def test_sqlite_writer_waits_for_a_long_lock_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "busy.sqlite"
    store = SQLHistoryStore(f"sqlite:///{path}")
    store.setup()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process's long write transaction
    released = threading.Event()

    def release_later() -> None:
        time.sleep(6.5)  # longer than sqlite3's 5 s default timeout
        holder.execute("COMMIT")
        released.set()

    thread = threading.Thread(target=release_later)
    thread.start()
    try:
        started = time.monotonic()
        (item,) = store.add_items("ana", ["written after the wait"])
        waited = time.monotonic() - started
    finally:
        thread.join()
        holder.close()
        store.close()
    assert released.is_set() and waited >= 6
    assert item.text == "written after the wait"


# --- Races with forget_user ------------------------------------------------------------------


def test_add_items_racing_delete_user_loses_nothing_and_raises_nothing(
    store: SQLHistoryStore,
    database: Database,
) -> None:
    _file_or_postgres(database)
    writers = [database.open() for _ in range(3)]
    deleter = database.open()
    errors: list[BaseException] = []
    added: list[int] = []
    removed: list[int] = []
    stop = threading.Event()

    def write(worker: SQLHistoryStore, n: int) -> None:
        try:
            for round_ in range(25):
                added.append(len(worker.add_items("u", [f"w{n} r{round_} a", f"w{n} r{round_} b"])))
        except BaseException as exc:
            errors.append(exc)

    def delete() -> None:
        try:
            while not stop.is_set():
                removed.append(deleter.delete_user("u"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w, n)) for n, w in enumerate(writers)]
    killer = threading.Thread(target=delete)
    killer.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    stop.set()
    killer.join(timeout=60)
    assert errors == []
    remaining = store.count_items("u")
    # Every stored item was either removed by exactly one delete or is still there.
    assert sum(added) == 150 and sum(removed) + remaining == 150
    assert any(r > 0 for r in removed), "the race never happened"
    if remaining:
        assert [u.user_id for u in store.list_users()] == ["u"]


def test_save_codes_for_deleted_items_is_ignored(store: SQLHistoryStore) -> None:
    items = store.add_items("ana", ["a", "b"])
    other = store.add_items("bob", ["c"])
    store.delete_user("ana")
    saved = store.save_codes({items[0].id: [1], items[1].id: [2], other[0].id: [3]}, "v1")
    assert saved == {other[0].id}
    assert count_rows(store, "curp_item_codes") == 1
    assert store.get_codes("bob", "v1").encoded[0].codes == (3,)


class _ForgetsAfterRead(SQLHistoryStore):
    """A store on which another client calls forget_user right after each get_codes."""

    def get_codes(self, user_id: str, codebook_version: str, limit: int | None = None) -> Any:
        result = super().get_codes(user_id, codebook_version, limit=limit)
        SQLHistoryStore(self.engine).delete_user(user_id)
        return result


def test_a_request_racing_forget_user_answers_as_for_an_unknown_user(
    encoder: Any, tmp_path: Path
) -> None:
    from curp_chain.model.checkpoint import load_checkpoint
    from curp_chain.personalization.personalizer import Personalizer

    store = _ForgetsAfterRead(f"sqlite:///{tmp_path / 'race.sqlite'}")
    store.setup()
    store.add_items("ana", ["stored without codes, encoded at the first request"])
    personalizer = Personalizer(load_checkpoint(), encoder, store)
    result = personalizer.personalize("ana", "hello")
    assert not result.personalized and result.reason == "user has no history"
    assert store.list_users() == []
    store.close()


class _DeletesOneAfterRead(SQLHistoryStore):
    """A store on which another client deletes the oldest item right after each get_codes."""

    def get_codes(self, user_id: str, codebook_version: str, limit: int | None = None) -> Any:
        result = super().get_codes(user_id, codebook_version, limit=limit)
        oldest = min(item.id for item in self.get_items(user_id))
        SQLHistoryStore(self.engine).delete_items(user_id, [oldest])
        return result


def test_a_request_racing_delete_items_uses_the_items_left(encoder: Any, tmp_path: Path) -> None:
    from curp_chain.model.checkpoint import load_checkpoint
    from curp_chain.personalization.personalizer import Personalizer

    store = _DeletesOneAfterRead(f"sqlite:///{tmp_path / 'race.sqlite'}")
    store.setup()
    store.add_items("ana", ["first, deleted during the request", "second", "third"])
    personalizer = Personalizer(load_checkpoint(), encoder, store)
    result = personalizer.personalize("ana", "hello")
    assert result.personalized and result.history_items == 2
    store.close()


# --- Round trip, byte for byte ----------------------------------------------------------------

storable_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=80
).filter(lambda t: bool(t.strip()))
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | storable_text
metadata_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(storable_text, inner, max_size=3),
    max_leaves=8,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(storable_text, min_size=1, max_size=4),
    kind=storable_text.filter(lambda k: len(k) <= 64),
    metadata=st.dictionaries(storable_text, metadata_values, max_size=3),
    seconds=st.integers(-2_000_000_000, 7_000_000_000),
    micros=st.integers(0, 999_999),
)
def test_what_is_stored_is_what_is_read_back(
    store: SQLHistoryStore,
    texts: list[str],
    kind: str,
    metadata: dict[str, Any],
    seconds: int,
    micros: int,
) -> None:
    created = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
    batch = [NewHistoryItem(t, kind, created, metadata) for t in texts]
    written = store.add_items("prop", batch)
    read = {item.id: item for item in store.get_items("prop")}
    for item, new in zip(written, batch, strict=True):
        back = read[item.id]
        assert back.text.encode("utf-8") == new.text.encode("utf-8")
        assert back.kind == new.kind and back.created_at == created
        assert dict(back.metadata) == metadata
    assert store.count_by_hash("prop", [content_hash(b) for b in batch]) == Counter(
        content_hash(b) for b in batch
    )
    store.delete_user("prop")
