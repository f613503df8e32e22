"""SQLHistoryStore against real databases: in-memory SQLite, a SQLite file, and PostgreSQL.

PostgreSQL tests use CURP_TEST_POSTGRES_URL (default: the CI server at 127.0.0.1:5432),
each in a fresh schema dropped afterwards; they are skipped only if the server is
unreachable, and the skip reason says why.
"""

from __future__ import annotations

import threading
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, event, inspect, make_url, text, update
from store_support import Database, count_rows

from curp_chain.errors import InvalidHistoryItemError, InvalidUserIdError, StoreError
from curp_chain.interfaces.history import MAX_ITEM_CHARS, HistoryItem, ItemCodes, NewHistoryItem
from curp_chain.interfaces.protocols import HistoryStore
from curp_chain_stores import SQLHistoryStore, default_sqlite_url
from curp_chain_stores.migrations import SCHEMA_VERSION
from curp_chain_stores.models import Base

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _items(*texts: str, start: datetime = T0) -> list[NewHistoryItem]:
    """Items one minute apart, oldest first."""
    return [NewHistoryItem(t, created_at=start + timedelta(minutes=i)) for i, t in enumerate(texts)]


# --- Basics -------------------------------------------------------------------------------


def test_is_a_history_store(store: SQLHistoryStore) -> None:
    typed: HistoryStore = store  # mypy checks the signatures match the Protocol
    assert isinstance(typed, HistoryStore)


def test_roundtrip_keeps_every_field(store: SQLHistoryStore) -> None:
    written = store.add_items(
        "ana",
        [
            NewHistoryItem("first post", kind="tweet", created_at=T0, metadata={"lang": "en"}),
            NewHistoryItem("a mail", kind="email", created_at=T0 + timedelta(hours=1)),
            "plain string item",
        ],
    )
    assert [item.text for item in written] == ["first post", "a mail", "plain string item"]
    assert len({item.id for item in written}) == 3
    read = store.get_items("ana")
    assert read == list(reversed(written))
    first = read[-1]
    assert first == HistoryItem(written[0].id, "ana", "first post", "tweet", T0, {"lang": "en"})
    assert read[0].kind == "text" and read[0].created_at.tzinfo is not None


def test_items_without_time_get_the_time_of_the_call(store: SQLHistoryStore) -> None:
    before = datetime.now(UTC)
    store.add_items("ana", ["one", "two"])
    after = datetime.now(UTC)
    items = store.get_items("ana")
    assert all(before <= item.created_at <= after for item in items)
    # Same timestamp: the later-added item counts as newer.
    assert [item.text for item in items] == ["two", "one"]


def test_other_timezones_are_stored_as_the_same_instant(store: SQLHistoryStore) -> None:
    paris = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    naive = datetime(2024, 5, 1, 11, 0)
    store.add_items("ana", [NewHistoryItem("tz", created_at=paris)])
    store.add_items("ana", [NewHistoryItem("naive", created_at=naive)])
    by_text = {item.text: item.created_at for item in store.get_items("ana")}
    assert by_text["tz"] == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert by_text["tz"].utcoffset() == timedelta(0)
    assert by_text["naive"] == datetime(2024, 5, 1, 11, 0, tzinfo=UTC)


def test_newest_first_across_batches(store: SQLHistoryStore) -> None:
    store.add_items("ana", _items("b", "d", start=T0 + timedelta(minutes=1)))  # t=1, t=2
    store.add_items("ana", [NewHistoryItem("a", created_at=T0)])  # oldest, added last
    store.add_items("ana", [NewHistoryItem("e", created_at=T0 + timedelta(days=1))])
    store.add_items("ana", [NewHistoryItem("c", created_at=T0 + timedelta(minutes=1))])
    assert [item.text for item in store.get_items("ana")] == ["e", "d", "c", "b", "a"]


def test_limit_returns_the_newest(store: SQLHistoryStore) -> None:
    store.add_items("ana", _items("1", "2", "3", "4"))
    assert [item.text for item in store.get_items("ana", limit=2)] == ["4", "3"]
    assert store.get_items("ana", limit=0) == []
    assert len(store.get_items("ana", limit=100)) == 4
    with pytest.raises(ValueError, match="limit"):
        store.get_items("ana", limit=-1)


def test_unknown_user_has_nothing(store: SQLHistoryStore) -> None:
    store.add_items("ana", ["x"])
    assert store.get_items("bob") == []
    assert store.count_items("bob") == 0
    assert store.get_codes("bob", "v1").encoded == []
    assert store.delete_user("bob") == 0
    assert store.count_items("ana") == 1


# --- Codes --------------------------------------------------------------------------------


def test_codes_roundtrip_and_stale_after_codebook_change(store: SQLHistoryStore) -> None:
    items = store.add_items(
        "ana", _items("a", "b", "c"), codes=[[0, 1], [65535, 7], [300, 2]], codebook_version="v1"
    )
    a, b, c = (item.id for item in items)
    v1 = store.get_codes("ana", "v1")
    assert v1.encoded == [ItemCodes(c, (300, 2)), ItemCodes(b, (65535, 7)), ItemCodes(a, (0, 1))]
    assert v1.stale == []

    # A new codebook: every item is stale until re-encoded.
    v2 = store.get_codes("ana", "v2")
    assert v2.encoded == []
    assert [item.id for item in v2.stale] == [c, b, a]
    assert v2.stale[0].text == "c"

    store.save_codes({b: [9, 9, 9]}, "v2")
    v2 = store.get_codes("ana", "v2")
    assert v2.encoded == [ItemCodes(b, (9, 9, 9))]
    assert [item.id for item in v2.stale] == [c, a]
    assert store.get_codes("ana", "v1") == v1  # the old version's codes are untouched


def test_get_codes_limit_covers_only_the_newest(store: SQLHistoryStore) -> None:
    items = store.add_items("ana", _items("a", "b", "c", "d"))
    store.save_codes({items[0].id: [1], items[3].id: [4]}, "v1")
    codes = store.get_codes("ana", "v1", limit=2)
    assert codes.encoded == [ItemCodes(items[3].id, (4,))]
    assert [item.id for item in codes.stale] == [items[2].id]


def test_save_codes_replaces_codes_of_the_same_version(store: SQLHistoryStore) -> None:
    (item,) = store.add_items("ana", ["a"], codes=[[1, 2]], codebook_version="v1")
    store.save_codes({item.id: [3, 4]}, "v2")
    store.save_codes({item.id: [5, 6]}, "v1")
    store.save_codes({item.id: [7, 8]}, "v1")
    assert store.get_codes("ana", "v1").encoded == [ItemCodes(item.id, (7, 8))]
    assert store.get_codes("ana", "v2").encoded == [ItemCodes(item.id, (3, 4))]
    assert count_rows(store, "curp_item_codes") == 2


def test_save_codes_for_unknown_item_skips_it(store: SQLHistoryStore) -> None:
    (item,) = store.add_items("ana", ["a"])
    saved = store.save_codes({item.id: [1], item.id + 1000: [2]}, "v1")
    assert saved == {item.id}
    assert store.get_codes("ana", "v1").encoded == [ItemCodes(item.id, (1,))]
    assert count_rows(store, "curp_item_codes") == 1


def test_save_codes_many_items(store: SQLHistoryStore) -> None:
    items = store.add_items("ana", [f"item {i}" for i in range(1200)])
    store.save_codes({item.id: [item.id % 65536, 1] for item in items}, "v1")
    codes = store.get_codes("ana", "v1")
    assert len(codes.encoded) == 1200 and codes.stale == []
    assert all(c.codes == (c.item_id % 65536, 1) for c in codes.encoded)


def test_get_codes_returns_whole_stale_items_newest_first(store: SQLHistoryStore) -> None:
    items = store.add_items(
        "ana", [NewHistoryItem(f"item {i}", kind="post", metadata={"n": i}) for i in range(1200)]
    )
    store.save_codes({items[5].id: [1, 2]}, "v1")
    codes = store.get_codes("ana", "v1")
    assert codes.encoded == [ItemCodes(items[5].id, (1, 2))]
    expected = [item for item in reversed(items) if item.id != items[5].id]
    assert codes.stale == expected  # ids, texts, kinds, times (UTC) and metadata


@pytest.mark.parametrize(
    ("codes", "version", "message"),
    [
        ([[1, 2]], "v1", "codes for 1 items but 2"),
        ([[1, 2], [3, 4], [5, 6]], "v1", "codes for 3 items but 2"),
        ([[1, 2], [3, 65536]], "v1", "0..65535"),
        ([[1, 2], [-1, 4]], "v1", "0..65535"),
        ([[1, 2], [3]], "v1", "1 entries but earlier items have 2"),
        ([[1, 2], [3, 4.0]], "v1", "must be an int"),
        ([[1, 2], [True, 4]], "v1", "must be an int"),
        ([[1, 2], []], "v1", "empty"),
        ([[1, 2], [3, 4]], None, "codebook_version is missing"),
        (None, "v1", "codes is missing"),
        ([[1, 2], [3, 4]], "", "non-empty"),
        ([[1, 2], [3, 4]], "v" * 65, "limit is 64"),
    ],
)
def test_bad_codes_store_nothing(
    store: SQLHistoryStore, codes: Any, version: str | None, message: str
) -> None:
    with pytest.raises(InvalidHistoryItemError, match=message):
        store.add_items("ana", ["a", "b"], codes=codes, codebook_version=version)
    assert store.list_users() == []
    assert count_rows(store, "curp_history_items") == 0


def test_save_codes_rejects_bad_codes(store: SQLHistoryStore) -> None:
    a, b = store.add_items("ana", ["a", "b"])
    with pytest.raises(InvalidHistoryItemError, match="earlier items have"):
        store.save_codes({a.id: [1, 2], b.id: [1]}, "v1")
    with pytest.raises(InvalidHistoryItemError, match="item ids must be ints"):
        store.save_codes({str(a.id): [1]}, "v1")  # type: ignore[dict-item]  # str ids on purpose
    assert count_rows(store, "curp_item_codes") == 0


# --- Atomicity and validation ---------------------------------------------------------------


def test_bad_third_item_stores_nothing_and_keeps_earlier_items(store: SQLHistoryStore) -> None:
    earlier = store.add_items("ana", ["kept 1", "kept 2"])
    with pytest.raises(InvalidHistoryItemError, match="item 2"):
        store.add_items("ana", ["new 1", "new 2", "   ", "new 4"])
    assert store.get_items("ana") == list(reversed(earlier))


def test_database_failure_mid_batch_rolls_back_everything(
    store: SQLHistoryStore, database: Database
) -> None:
    earlier = store.add_items("ana", ["kept"])

    def fail_on_codes(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # A real driver error, raised once the items are already inserted in the transaction.
        if "curp_item_codes" in statement:
            raise store.engine.dialect.loaded_dbapi.OperationalError("injected failure")

    event.listen(store.engine, "before_cursor_execute", fail_on_codes)
    try:
        with pytest.raises(StoreError, match=r"add_items failed on .*injected failure"):
            store.add_items("bob", ["b1", "b2", "b3"], codes=[[1], [2], [3]], codebook_version="v")
    finally:
        event.remove(store.engine, "before_cursor_execute", fail_on_codes)
    assert store.get_items("ana") == earlier
    assert store.count_items("bob") == 0
    assert [user.user_id for user in store.list_users()] == ["ana"]
    assert count_rows(store, "curp_history_items") == 1


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "item 1 is empty or whitespace"),
        (" \n\t ", "item 1 is empty or whitespace"),
        ("x" * (MAX_ITEM_CHARS + 1), "limit is 20,000"),
        ("nul\x00byte", "NUL"),
        ("lone \ud800 surrogate", "surrogate"),
        (NewHistoryItem("ok", kind="k" * 65), "at most 64"),
        (NewHistoryItem("ok", kind=""), "empty kind"),
        (NewHistoryItem("ok", metadata={"when": datetime.now()}), "JSON"),
        (NewHistoryItem("ok", metadata={"x": float("nan")}), "JSON"),
        (42, "item 1 is a int"),
        # A string for created_at on purpose: callers without a type checker can pass one.
        (NewHistoryItem("ok", created_at="2024-01-01"), "expected a datetime"),  # type: ignore[arg-type]
    ],
)
def test_bad_item_is_rejected_with_the_project_error(
    store: SQLHistoryStore, bad: Any, message: str
) -> None:
    with pytest.raises(InvalidHistoryItemError, match=message):
        store.add_items("ana", ["fine", bad])
    assert store.list_users() == []


def test_longest_allowed_item_is_stored(store: SQLHistoryStore) -> None:
    store.add_items("ana", ["y" * MAX_ITEM_CHARS])
    assert len(store.get_items("ana")[0].text) == MAX_ITEM_CHARS


def test_not_a_batch_is_rejected(store: SQLHistoryStore) -> None:
    with pytest.raises(InvalidHistoryItemError, match="wrap a single item"):
        store.add_items("ana", "just a string")  # a str is a Sequence too: caught at runtime
    with pytest.raises(InvalidHistoryItemError, match="no history items"):
        store.add_items("ana", [])


@pytest.mark.parametrize("user_id", ["", "   ", "u" * 256, 123, None, "nul\x00id", "\udc80"])
def test_bad_user_id_is_rejected(store: SQLHistoryStore, user_id: Any) -> None:
    with pytest.raises(InvalidUserIdError):
        store.add_items(user_id, ["x"])
    with pytest.raises(InvalidUserIdError):
        store.get_items(user_id)
    with pytest.raises(InvalidUserIdError):
        store.get_codes(user_id, "v1")
    with pytest.raises(InvalidUserIdError):
        store.delete_user(user_id)
    assert store.list_users() == []


def test_longest_user_id_is_accepted(store: SQLHistoryStore) -> None:
    user_id = "ü" * 255
    store.add_items(user_id, ["x"])
    assert [user.user_id for user in store.list_users()] == [user_id]


# --- Text ---------------------------------------------------------------------------------


def test_unicode_and_emoji_roundtrip(store: SQLHistoryStore) -> None:
    texts = [
        "héllo wörld",
        "日本語のテキスト",
        "emoji 🎉👩‍👩‍👧‍👦🏳️‍🌈",
        "rtl עברית",
        "line\nbreak\r\ttab",
    ]
    store.add_items("ana", texts, codes=[[i] for i in range(5)], codebook_version="v1")
    store.add_items("ana", [NewHistoryItem("x", metadata={"tag": "🎉", "nested": {"a": [1]}})])
    items = store.get_items("ana")
    assert [item.text for item in reversed(items[1:])] == texts
    assert items[0].metadata == {"tag": "🎉", "nested": {"a": [1]}}


valid_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=200).filter(
    lambda t: bool(t.strip()) and "\x00" not in t
)
valid_user_id = st.text(
    st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=100
).filter(lambda t: bool(t.strip()) and t == t.strip())


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(item_text=valid_text, user_id=valid_user_id)
def test_any_text_and_user_id_roundtrip(
    store: SQLHistoryStore, item_text: str, user_id: str
) -> None:
    (written,) = store.add_items(user_id, [item_text])
    assert written.text == item_text
    newest = store.get_items(user_id, limit=1)
    assert newest[0] == written
    # The policy's one change: NFC. Either spelling reaches the same user.
    assert newest[0].user_id == unicodedata.normalize("NFC", user_id)
    assert store.get_items(unicodedata.normalize("NFD", user_id), limit=1) == newest


# --- Users --------------------------------------------------------------------------------


def test_delete_user_cascades_to_items_and_codes(store: SQLHistoryStore) -> None:
    store.add_items("ana", ["a1", "a2", "a3"], codes=[[1], [2], [3]], codebook_version="v1")
    (bob_item,) = store.add_items("bob", ["b1"], codes=[[4]], codebook_version="v1")
    assert store.delete_user("ana") == 3
    assert store.get_items("ana") == []
    assert [user.user_id for user in store.list_users()] == ["bob"]
    assert count_rows(store, "curp_history_items") == 1
    assert count_rows(store, "curp_item_codes") == 1
    assert store.get_codes("bob", "v1").encoded == [ItemCodes(bob_item.id, (4,))]
    assert store.delete_user("ana") == 0


def test_deleted_item_ids_are_not_reused(store: SQLHistoryStore) -> None:
    (old,) = store.add_items("ana", ["a"])
    store.delete_user("ana")
    (new,) = store.add_items("bob", ["b"])
    assert new.id > old.id
    assert store.save_codes({old.id: [1]}, "v1") == set()
    assert count_rows(store, "curp_item_codes") == 0


def test_list_users_counts(store: SQLHistoryStore) -> None:
    store.add_items("bob", _items("b1", "b2"))
    store.add_items("ana", _items("a1", "a2", "a3", start=T0 + timedelta(days=2)))
    users = store.list_users()
    assert [(u.user_id, u.n_items) for u in users] == [("ana", 3), ("bob", 2)]
    assert users[0].last_item_at == T0 + timedelta(days=2, minutes=2)
    assert users[1].last_item_at == T0 + timedelta(minutes=1)
    assert store.count_items("ana") == 3


def test_two_users_never_mix(store: SQLHistoryStore) -> None:
    for i in range(3):
        store.add_items("ana", [f"ana {i}"], codes=[[i]], codebook_version="v1")
        store.add_items("bob", [f"bob {i}"])
    assert {item.user_id for item in store.get_items("ana")} == {"ana"}
    assert [item.text for item in store.get_items("bob")] == ["bob 2", "bob 1", "bob 0"]
    assert len(store.get_codes("ana", "v1").encoded) == 3
    bob_codes = store.get_codes("bob", "v1")
    assert bob_codes.encoded == [] and {item.user_id for item in bob_codes.stale} == {"bob"}
    assert store.count_items("ana") == store.count_items("bob") == 3
    store.delete_user("bob")
    assert store.count_items("ana") == 3


# --- Schema and setup ---------------------------------------------------------------------


def test_use_before_setup_says_to_call_setup(database: Database) -> None:
    store = database.open()
    with pytest.raises(StoreError, match=r"call store.setup\(\) first"):
        store.get_items("ana")
    with pytest.raises(StoreError, match=r"call store.setup\(\) first"):
        store.add_items("ana", ["x"])
    store.setup()
    store.add_items("ana", ["x"])
    assert store.count_items("ana") == 1


def test_setup_is_idempotent_and_keeps_data(database: Database) -> None:
    store = database.open()
    store.setup()
    store.add_items("ana", ["x"], codes=[[1]], codebook_version="v1")
    store.setup()
    other = database.open()
    other.setup()
    assert other.get_items("ana")[0].text == "x"
    assert other.get_codes("ana", "v1").encoded[0].codes == (1,)
    with store.engine.connect() as connection:
        versions = connection.execute(text("SELECT id, version FROM curp_schema_version")).all()
    assert [tuple(row) for row in versions] == [(1, SCHEMA_VERSION)]


def test_concurrent_setup_from_separate_connections(database: Database) -> None:
    if database.kind == "sqlite-memory":
        pytest.skip("an in-memory database has one connection; nothing can run concurrently")
    stores = [database.open() for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def run(store: SQLHistoryStore) -> None:
        try:
            barrier.wait()
            store.setup()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    stores[0].add_items("ana", ["x"])
    assert all(s.count_items("ana") == 1 for s in stores)
    assert count_rows(stores[0], "curp_schema_version") == 1


def test_concurrent_writers_do_not_fail(database: Database) -> None:
    """Requests for one user racing: creating the user, and caching codes for one item."""
    if database.kind == "sqlite-memory":
        pytest.skip("an in-memory database has one connection; nothing can run concurrently")
    first = database.open()
    first.setup()
    items = first.add_items("ana", [f"item {i}" for i in range(20)])
    stores = [database.open() for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def run(n: int, store: SQLHistoryStore) -> None:
        try:
            barrier.wait()
            for round_ in range(5):
                store.add_items("new user", [f"writer {n} round {round_}"])
                store.save_codes({item.id: [n, round_] for item in items}, "v1")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert first.count_items("new user") == 20
    codes = first.get_codes("ana", "v1")
    assert codes.stale == [] and len(codes.encoded) == 20
    assert {c.codes[1] for c in codes.encoded} == {4}  # every writer's last round wins
    assert count_rows(first, "curp_item_codes") == 20


def test_older_schema_asks_for_setup_then_migrates(
    store: SQLHistoryStore, database: Database
) -> None:
    store.add_items("ana", ["kept"])
    with store.engine.begin() as connection:
        connection.execute(update(Base.metadata.tables["curp_schema_version"]).values(version=0))
    fresh = database.open()
    with pytest.raises(StoreError, match=r"schema version 0.*call store.setup\(\) to migrate"):
        fresh.get_items("ana")
    fresh.setup()
    assert [item.text for item in fresh.get_items("ana")] == ["kept"]


def test_newer_schema_is_refused(store: SQLHistoryStore, database: Database) -> None:
    with store.engine.begin() as connection:
        connection.execute(update(Base.metadata.tables["curp_schema_version"]).values(version=99))
    fresh = database.open()
    with pytest.raises(StoreError, match=r"version 99.*upgrade curp-chain-stores"):
        fresh.get_items("ana")
    with pytest.raises(StoreError, match="version 99"):
        fresh.setup()


def test_migrations_create_what_the_models_describe(store: SQLHistoryStore) -> None:
    inspector = inspect(store.engine)
    for name, table in Base.metadata.tables.items():
        columns = {c["name"]: c["nullable"] for c in inspector.get_columns(name)}
        assert columns == {c.name: c.nullable for c in table.columns}, name
        pk = inspector.get_pk_constraint(name)["constrained_columns"]
        assert pk == [c.name for c in table.primary_key.columns], name
        indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes(name)}
        expected = {i.name: [c.name for c in i.columns] for i in table.indexes}
        assert indexes == expected, name
        foreign_keys = {
            (tuple(fk["constrained_columns"]), fk["referred_table"], fk["options"].get("ondelete"))
            for fk in inspector.get_foreign_keys(name)
        }
        assert foreign_keys == {
            ((fk.parent.name,), fk.column.table.name, fk.ondelete) for fk in table.foreign_keys
        }, name
    assert {i["name"] for i in inspector.get_indexes("curp_history_items")} == {
        "ix_curp_history_items_user_created",
        "ix_curp_history_items_user_hash",
    }


# --- Engine and errors --------------------------------------------------------------------


def test_constructor_touches_nothing(tmp_path: Path) -> None:
    path = tmp_path / "never.sqlite"
    store = SQLHistoryStore(f"sqlite:///{path}")
    assert not path.exists()
    store.close()


def test_sqlite_file_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    store = SQLHistoryStore(f"sqlite:///{tmp_path / 'h.sqlite'}")
    store.setup()
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    store.close()


def test_in_memory_database_survives_across_calls() -> None:
    with SQLHistoryStore("sqlite://") as store:
        store.setup()
        store.add_items("ana", ["x"])
        assert store.count_items("ana") == 1


def test_unreachable_database_error_hides_the_password() -> None:
    store = SQLHistoryStore("postgresql+psycopg://curp:s3cret@127.0.0.1:1/nowhere")
    with pytest.raises(StoreError) as info:
        store.get_items("ana")
    message = str(info.value)
    assert "s3cret" not in message
    assert "curp:***@127.0.0.1:1/nowhere" in message
    with pytest.raises(StoreError, match=r"^setup failed on .*\*\*\*"):
        store.setup()
    store.close()


def test_bad_urls_are_store_errors() -> None:
    with pytest.raises(StoreError, match="not a database URL"):
        SQLHistoryStore("not a url with password hunter2")
    with pytest.raises(StoreError, match="cannot use database URL"):
        SQLHistoryStore("nosuchdialect://u:pw@host/db")


def test_caller_owned_engine_is_not_disposed(tmp_path: Path) -> None:
    engine: Engine = create_engine(f"sqlite:///{tmp_path / 'h.sqlite'}")
    with SQLHistoryStore(engine) as store:
        store.setup()
        store.add_items("ana", ["x"])
    # Still usable after the store closed, and foreign keys were turned on for it.
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert SQLHistoryStore(engine).count_items("ana") == 1
    engine.dispose()


def test_default_sqlite_url_honours_curp_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "curp home"
    monkeypatch.setenv("CURP_HOME", str(home))
    url = default_sqlite_url()
    assert home.is_dir()
    assert make_url(url).database == str(home / "history.sqlite")
    with SQLHistoryStore(url) as store:
        store.setup()
    assert (home / "history.sqlite").exists()


def test_default_sqlite_url_uses_user_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CURP_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    import platformdirs

    expected = Path(platformdirs.user_data_dir("curp-chain")) / "history.sqlite"
    assert make_url(default_sqlite_url()).database == str(expected)
    assert expected.parent.is_dir()
    assert str(tmp_path) in str(expected)


# --- Single items -------------------------------------------------------------------------


def test_delete_items_removes_only_the_users_own_items_and_their_codes(
    store: SQLHistoryStore,
) -> None:
    a1, a2, a3 = store.add_items("ana", _items("a1", "a2", "a3"), [[1], [2], [3]], "v1")
    (b1,) = store.add_items("bob", ["b1"], codes=[[4]], codebook_version="v1")
    # bob's item and an id of no item are ignored; a repeated id counts once.
    assert store.delete_items("ana", [a2.id, a2.id, b1.id, b1.id + 1000]) == 1
    assert [item.text for item in store.get_items("ana")] == ["a3", "a1"]
    assert store.get_codes("ana", "v1").encoded == [ItemCodes(a3.id, (3,)), ItemCodes(a1.id, (1,))]
    assert count_rows(store, "curp_item_codes") == 3
    assert store.get_items("bob") == [b1]
    assert store.delete_items("ana", []) == 0
    assert store.delete_items("ana", [a1.id, a3.id]) == 2
    # The user stays, with no items: only delete_user removes a user.
    assert [(u.user_id, u.n_items) for u in store.list_users()] == [("ana", 0), ("bob", 1)]


def test_add_items_replacing_swaps_in_one_transaction(store: SQLHistoryStore) -> None:
    old, kept = store.add_items("ana", _items("old", "kept"), [[1], [2]], "v1")
    (b1,) = store.add_items("bob", ["b1"])
    (new,) = store.add_items("ana", ["new"], [[3]], "v1", replacing=[old.id, b1.id])
    assert [item.text for item in store.get_items("ana")] == ["new", "kept"]
    assert store.get_items("bob") == [b1]
    assert {c.item_id for c in store.get_codes("ana", "v1").encoded} == {new.id, kept.id}
    # A bad new item keeps the old one: nothing happens.
    with pytest.raises(InvalidHistoryItemError):
        store.add_items("ana", ["  "], replacing=[kept.id])
    assert store.count_items("ana") == 2


def test_get_items_of_one_kind(store: SQLHistoryStore) -> None:
    store.add_items(
        "ana",
        [NewHistoryItem("a tweet", kind="tweet"), NewHistoryItem("a memory", kind="memory")],
    )
    assert [item.text for item in store.get_items("ana", kind="memory")] == ["a memory"]
    assert store.get_items("ana", kind="email") == []
    assert len(store.get_items("ana")) == 2


@pytest.mark.parametrize("item_ids", ["12", [1, "2"], [True], None])
def test_bad_item_ids_are_rejected(store: SQLHistoryStore, item_ids: Any) -> None:
    (item,) = store.add_items("ana", ["a"])
    with pytest.raises(InvalidHistoryItemError, match="item ids"):
        store.delete_items("ana", item_ids)
    with pytest.raises(InvalidHistoryItemError, match="item ids"):
        store.add_items("ana", ["b"], replacing=item_ids)
    assert store.get_items("ana") == [item]
