"""The history store when its database drops connections: connections ended by the server,
a real PostgreSQL restart during reads, and a database that never answered."""

from __future__ import annotations

import threading
import time

import pytest
from server_support import restart_postgres
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool
from store_support import POSTGRES_URL

from curp_chain.errors import StoreError
from curp_chain_stores import SQLHistoryStore

VERSION = "v-test"


def end_connections(url: str) -> int:
    """End every connection to the database, as a restart does (same error message)."""
    database = make_url(url).database
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        ended = connection.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": database},
        )
    admin.dispose()
    return int(ended or 0)


def filled(url: str) -> SQLHistoryStore:
    store = SQLHistoryStore(url)
    store.setup()
    store.add_items("ana", ["first", "second"], [[1, 2], [3, 4]], VERSION)
    return store


@pytest.mark.postgres
def test_connections_ended_by_the_server_fail_no_call(postgres_database_url: str) -> None:
    with filled(postgres_database_url) as store:
        assert store.count_items("ana") == 2  # pooled connections now exist
        assert end_connections(postgres_database_url) >= 1
        assert len(store.get_codes("ana", VERSION, limit=10).encoded) == 2
        assert end_connections(postgres_database_url) >= 1
        store.add_items("ana", ["third"])
        assert end_connections(postgres_database_url) >= 1
        assert store.get_items("ana", limit=1)[0].text == "third"


@pytest.mark.postgres
def test_without_the_checks_the_first_call_after_ended_connections_fails(
    postgres_database_url: str,
) -> None:
    # The failure the checks prevent: an engine without pre-ping, and no retry.
    engine = create_engine(postgres_database_url)
    with filled(postgres_database_url) as setup_store:
        setup_store.count_items("ana")
    store = SQLHistoryStore(engine, reconnect_wait=0)
    try:
        assert store.count_items("ana") == 2
        end_connections(postgres_database_url)
        with pytest.raises(StoreError, match="count_items failed.*terminating connection"):
            store.count_items("ana")
        assert store.count_items("ana") == 2  # the pool replaced it: only one call fails
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_reads_running_through_a_postgresql_restart_all_succeed(postgres_database_url: str) -> None:
    with filled(postgres_database_url) as store:
        results: list[str] = []
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                try:
                    codes = store.get_codes("ana", VERSION, limit=10)
                    results.append("ok" if len(codes.encoded) == 2 else "wrong")
                except StoreError as error:
                    results.append(str(error))
                time.sleep(0.01)

        readers = [threading.Thread(target=read) for _ in range(3)]
        for reader in readers:
            reader.start()
        time.sleep(0.5)
        before = len(results)
        restart_postgres()
        time.sleep(1)
        stop.set()
        for reader in readers:
            reader.join(60)
        assert len(results) > before
        assert [r for r in results if r != "ok"] == []
        store.add_items("ana", ["after the restart"])
        assert store.count_items("ana") == 3


def test_a_database_that_never_answered_fails_at_once_without_waiting() -> None:
    store = SQLHistoryStore("postgresql+psycopg://curp@127.0.0.1:1/nowhere", reconnect_wait=30)
    started = time.monotonic()
    with pytest.raises(StoreError, match="get_items failed"):
        store.get_items("ana")
    assert time.monotonic() - started < 10  # not the 30 s a dropped connection may wait
    store.close()
