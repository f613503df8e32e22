"""A store for trying `curp inspect`: the three everyday-chat users and the first 20 PAN 2019
users (their first 20 tweets each), encoded with the bundled checkpoint.

    python benchmarks/inspect_store.py sqlite:///inspect.sqlite --pan ../shared/data/pan19
    curp inspect --store sqlite:///inspect.sqlite --user maya --plot maya.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from curp_chain.model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.personalization.personalizer import Personalizer
from curp_chain.runtime.defaults import open_store

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="SQLAlchemy URL of the store to fill")
    parser.add_argument("--pan", type=Path, default=Path("../shared/data/pan19"))
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--items", type=int, default=20)
    args = parser.parse_args()
    store = open_store(args.store)
    personalizer = Personalizer(load_checkpoint(DEFAULT_CHECKPOINT), SentenceEncoder(), store)
    everyday = json.loads((HERE / "everyday_users.json").read_text())["users"]
    for user_id, items in everyday.items():
        personalizer.add_history(user_id, items)
    with (args.pan / "humans.jsonl").open() as lines:
        for number, line in zip(range(args.users), lines, strict=False):
            tweets = [t for t in json.loads(line)["tweets"] if t.strip()][: args.items]
            personalizer.add_history(f"pan-{number:02d}", tweets, truncate=True)
    print(f"{len(store.list_users())} users in {args.store}")


if __name__ == "__main__":
    main()
