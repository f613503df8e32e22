"""History lookup with 1M stored items, on SQLite and PostgreSQL.

Rows are written by bulk inserts (no encoder: random codes), 10,000 users x 100 items by
default, each with cached codes. Then a request's read, ``get_codes`` of the newest 24
items (the bundled checkpoint's ``max_history_items``), and ``get_items(limit=24)`` for
random users: p50/p99 in milliseconds. Building the rows is timed too.

    python benchmarks/lookup.py --users 10000 --items-per-user 100 \
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import create_engine, insert, make_url, text

from curp_chain_stores import SQLHistoryStore
from curp_chain_stores.models import HistoryItemRow, ItemCodesRow, UserRow, pack_codes

VERSION = "bench-codebook"
BENCH_DB = "curp_bench_lookup"
CHUNK = 20_000


def fill(store: SQLHistoryStore, users: int, per_user: int, subspaces: int) -> float:
    """Bulk-insert users x per_user items with codes; returns seconds taken."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    base = datetime(2026, 1, 1, tzinfo=UTC)
    with store.engine.begin() as connection:
        connection.execute(
            insert(UserRow.__table__),
            [{"id": f"user{u}", "created_at": base} for u in range(users)],
        )
    item_id = 0
    rows: list[dict[str, object]] = []
    codes: list[dict[str, object]] = []

    def flush() -> None:
        with store.engine.begin() as connection:
            connection.execute(insert(HistoryItemRow.__table__), rows)
            connection.execute(insert(ItemCodesRow.__table__), codes)
        rows.clear()
        codes.clear()

    for u in range(users):
        block = rng.integers(0, 64, (per_user, subspaces))
        for i in range(per_user):
            item_id += 1
            rows.append(
                {
                    "id": item_id,
                    "user_id": f"user{u}",
                    "text": f"item {i} of user {u}: a short post about the day",
                    "kind": "text",
                    "created_at": base + timedelta(minutes=i),
                    "metadata": {},
                }
            )
            codes.append(
                {"item_id": item_id, "codebook_version": VERSION, "codes": pack_codes(block[i])}
            )
        if len(rows) >= CHUNK:
            flush()
    if rows:
        flush()
    return time.perf_counter() - start


def timed(work, runs: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), statistics.quantiles(times, n=100)[98]


def measure(name: str, url: str, args: argparse.Namespace) -> None:
    store = SQLHistoryStore(url)
    store.setup()
    seconds = fill(store, args.users, args.items_per_user, 17)
    total = args.users * args.items_per_user
    picks = random.Random(0)
    users = [f"user{picks.randrange(args.users)}" for _ in range(args.lookups)]
    it = iter(users * 3)
    codes = timed(lambda: store.get_codes(next(it), VERSION, limit=24), args.lookups)
    items = timed(lambda: store.get_items(next(it), limit=24), args.lookups)
    found = store.get_codes(users[0], VERSION, limit=24)
    assert len(found.encoded) == 24 and not found.stale
    print(
        f"| {name} | {total:,} | {seconds:.0f} s ({total / seconds:,.0f} rows/s) "
        f"| {codes[0]:.2f} / {codes[1]:.2f} | {items[0]:.2f} / {items[1]:.2f} |"
    )
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items-per-user", type=int, default=100)
    parser.add_argument("--lookups", type=int, default=500)
    parser.add_argument(
        "--postgres", default=None, help="SQLAlchemy URL of a server (a scratch database is made)"
    )
    args = parser.parse_args()
    print(
        "| store | items | bulk insert | get_codes(24) ms p50 / p99 | get_items(24) ms p50 / p99 |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        measure("SQLite", f"sqlite:///{folder}/history.sqlite", args)
    if args.postgres:
        # A database of its own, dropped afterwards: the server may serve other work.
        server = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        with server.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {BENCH_DB}"))
            connection.execute(text(f"CREATE DATABASE {BENCH_DB}"))
        try:
            url = make_url(args.postgres).set(database=BENCH_DB)
            measure("PostgreSQL", url.render_as_string(hide_password=False), args)
        finally:
            with server.connect() as connection:
                connection.execute(text(f"DROP DATABASE IF EXISTS {BENCH_DB}"))
            server.dispose()


if __name__ == "__main__":
    main()
