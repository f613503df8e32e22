"""Personalization overhead per request, from cached codes, at 10 to 10k history items.

Each user's items are stored with codes already made (as after ingest), in a SQLite file.
Per request, ``Personalizer.personalize`` reads the newest ``max_history_items`` codes
(24 for the bundled checkpoint), embeds the query (the query-aware soft token) and runs
the CURP user model (its folded serving form, `curp_chain.model.folded`). Reported: p50/p99 of
the whole call and of its parts, timed separately; the same capped codes through the
`CurpUserModel` module, for comparison; and the user model over *all* of a user's codes
(what a checkpoint with no item cap would cost). Queries rotate through distinct texts,
so nothing keyed on the query text can serve a repeat.

    python benchmarks/personalization.py --sizes 10 100 1000 10000 --requests 200
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from curp_chain.model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.personalization.personalizer import Personalizer
from curp_chain_stores import SQLHistoryStore

TOPICS = ["a long run", "the new cafe", "my exam", "the game tonight", "rainy mornings"]
PLANS = ["before work tomorrow", "with friends later", "this weekend", "after class", "again"]
QUERIES = [
    f"Paraphrase the following tweet: thinking about {t} {p}, wish me luck"
    for t, p in itertools.product(TOPICS, PLANS)
]


def percentiles(work: Callable[[str], Any], runs: int) -> tuple[float, float]:
    """(p50, p99) milliseconds of ``work(query)`` over ``runs`` calls, after two warm-ups."""
    queries = itertools.cycle(QUERIES)
    work(next(queries)), work(next(queries))
    times = []
    for _ in range(runs):
        query = next(queries)
        start = time.perf_counter()
        work(query)
        times.append((time.perf_counter() - start) * 1000)
    q = statistics.quantiles(times, n=100)
    return statistics.median(times), q[98]


def measure_size(
    personalizer: Personalizer, size: int, rng: np.random.Generator, requests: int
) -> list[tuple[float, float]]:
    """Store ``size`` items with codes for a new user; time a request and its parts."""
    user_model, store = personalizer.user_model, personalizer.store
    config = user_model.config
    version = personalizer.codebook_version
    user = f"user{size}"
    codes = rng.integers(0, config.codebook_size, (size, config.num_subspaces))
    texts = [f"history item {i} of {user}" for i in range(size)]
    store.add_items(user, texts, codes.tolist(), version)
    query_vector = personalizer.item_vectors([QUERIES[0]])
    folded = personalizer.folded

    def module_over(rows: np.ndarray) -> None:
        with torch.inference_mode():
            tensor = torch.as_tensor(rows)[None]
            mask = torch.ones(tensor.shape[:2], dtype=torch.bool)
            user_model(tensor, mask, query_vector)

    capped = torch.as_tensor(codes[: config.max_history_items])
    every = torch.as_tensor(codes)
    limit = config.max_history_items
    return [
        percentiles(lambda q: personalizer.personalize(user, q), requests),
        percentiles(lambda q: store.get_codes(user, version, limit), requests),
        percentiles(lambda q: personalizer.item_vectors([q]), requests),
        percentiles(lambda q: folded.soft_tokens(capped, query_vector[0]), requests),
        percentiles(lambda q: module_over(codes[:limit]), requests),
        percentiles(
            lambda q: folded.soft_tokens(every, query_vector[0]),
            requests if size <= 1000 else max(20, requests // 10),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    user_model = load_checkpoint(str(DEFAULT_CHECKPOINT))
    config = user_model.config
    encoder = SentenceEncoder(encoder_id=config.encoder_id)
    rng = np.random.default_rng(0)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"torch threads {args.torch_threads}, {args.requests} requests per size, "
        f"max_history_items {config.max_history_items}; milliseconds p50 / p99"
    )
    print(
        "| items | personalize (total) | store read | query embed | user model (capped) "
        "| CurpUserModel module (capped) | user model (all items) |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        store = SQLHistoryStore(f"sqlite:///{folder}/history.sqlite")
        store.setup()
        personalizer = Personalizer(user_model, encoder, store)
        for size in args.sizes:
            cells = measure_size(personalizer, size, rng, args.requests)
            row = " | ".join(f"{p50:.2f} / {p99:.2f}" for p50, p99 in cells)
            print(f"| {size:,} | {row} |")
        store.close()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
