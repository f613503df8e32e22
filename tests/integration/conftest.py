"""Fixtures of the integration tier: databases for the store tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateSchema, DropSchema
from store_support import POSTGRES_URL, Database, postgres_unreachable

from curp_chain_stores import SQLHistoryStore


@pytest.fixture(
    params=[
        "sqlite-memory",
        "sqlite-file",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite-memory":
        db = Database("sqlite-memory", "sqlite://")
        yield db
        db.close()
    elif request.param == "sqlite-file":
        db = Database("sqlite-file", f"sqlite:///{tmp_path / 'history.sqlite'}")
        yield db
        db.close()
    else:
        reason = postgres_unreachable()
        if reason is not None:
            pytest.skip(reason)
        schema = f"curp_test_{uuid.uuid4().hex[:12]}"
        admin = create_engine(POSTGRES_URL)
        with admin.begin() as connection:
            connection.execute(CreateSchema(schema))
        url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        db = Database("postgres", url.render_as_string(hide_password=False))
        try:
            yield db
        finally:
            db.close()
            with admin.begin() as connection:
                connection.execute(DropSchema(schema, cascade=True))
            admin.dispose()


@pytest.fixture
def store(database: Database) -> SQLHistoryStore:
    store = database.open()
    store.setup()
    return store


@pytest.fixture
def postgres_database_url() -> Iterator[str]:
    """The URL of a database of its own on the local PostgreSQL, dropped afterwards, for tests
    that end its connections or restart the server."""
    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(reason)
    name = f"curp_test_{uuid.uuid4().hex[:10]}"
    # No pool: a restart ends every open connection.
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
