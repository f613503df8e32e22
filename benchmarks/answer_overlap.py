"""What a user's teacher answers share with each other, beside what each shares with its user.

    python benchmarks/answer_overlap.py [--train-users 20] [--json PATH]

A per-user soft prompt trained on some of a user's answers can help with the next one only
through what the answers have in common. For the kept teacher answers of the first N training
users (`$CURP_ASSIST_ANSWERS`, else training-data/assist), by all-MiniLM-L6-v2 cosine:

- answer to answer: two answers of one user against an answer of the user and one of another
  user, to different requests in both, so a shared request does not count;
- item to item: two of one user's history items against one of theirs and another user's, the
  same
  measure of how much one user's history holds together;
- which item an answer draws on: its nearest of its user's items, and how often two answers
  of one user draw on the same item.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from curp_chain.data.users import default_data_dir
from curp_chain.eval.assist import half_width
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.tasks.assist import AssistUser, candidates, interleave_users, load_users
from curp_chain.tasks.assist_task import answers_dir, kept_answers


def pair_gap(vectors: np.ndarray, owners: list[str], groups: list[str]) -> dict[str, float]:
    """Mean cosine of two rows of one owner against a row of the owner and one of another
    owner, never two rows of one group (the same request). The gap is taken per owner, so its
    interval is over owners."""
    sims = vectors @ vectors.T
    same: dict[str, list[float]] = defaultdict(list)
    other: dict[str, list[float]] = defaultdict(list)
    for i in range(len(owners)):
        for j in range(len(owners)):
            if i != j and groups[i] != groups[j]:
                (same if owners[i] == owners[j] else other)[owners[i]].append(float(sims[i, j]))
    owned = [o for o in same if other[o]]
    gaps = [statistics.fmean(same[o]) - statistics.fmean(other[o]) for o in owned]
    return {
        "same owner": statistics.fmean(statistics.fmean(same[o]) for o in owned),
        "two owners": statistics.fmean(statistics.fmean(other[o]) for o in owned),
        "gap": statistics.fmean(gaps),
        "gap, 95% half-width": half_width(gaps),
        "owners": len(owned),
    }


def user_gaps(encoder: SentenceEncoder, users: list[AssistUser], per_user: int) -> dict[str, Any]:
    """The answer-to-answer measure for history items: up to ``per_user`` items a user."""
    rng = random.Random(0)
    texts, owners = [], []
    for user in users:
        items = candidates(user)
        for item in rng.sample(items, min(per_user, len(items))):
            texts.append(item.text)
            owners.append(user.user_id)
    vectors = encoder.encode(texts).numpy()
    return pair_gap(vectors, owners, [str(i) for i in range(len(texts))])


def drawn_items(
    encoder: SentenceEncoder, records: list[dict[str, Any]], by_id: dict[str, AssistUser]
) -> dict[str, float]:
    """How often two answers of one user have the same nearest item of that user."""
    nearest: dict[str, list[str]] = defaultdict(list)
    answers = encoder.encode([r["answer"] for r in records]).numpy()
    for record, vector in zip(records, answers, strict=True):
        items = candidates(by_id[record["user_id"]])
        sims = encoder.encode([i.text for i in items]).numpy() @ vector
        nearest[record["user_id"]].append(items[int(np.argmax(sims))].id)
    shared, pairs = 0, 0
    for picks in nearest.values():
        for i in range(len(picks)):
            for j in range(i + 1, len(picks)):
                pairs += 1
                shared += picks[i] == picks[j]
    distinct = [len(set(p)) / len(p) for p in nearest.values()]
    return {
        "pairs with the same nearest item": shared / max(pairs, 1),
        "distinct nearest items per answer": statistics.fmean(distinct),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-users", type=int, default=20)
    parser.add_argument("--items-per-user", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    users = interleave_users(load_users(default_data_dir(), "train"))[: args.train_users]
    by_id = {u.user_id: u for u in users}
    records = [r for r in kept_answers(answers_dir(), "train") if r["user_id"] in by_id]
    encoder = SentenceEncoder()
    vectors = encoder.encode([r["answer"] for r in records]).numpy()
    owners = [r["user_id"] for r in records]
    answers = pair_gap(vectors, owners, [r["request_id"] for r in records])
    result = {
        "answers": len(records),
        "users": len({r["user_id"] for r in records}),
        "answer to answer": answers,
        "item to item": user_gaps(encoder, users, args.items_per_user),
        "drawn items": drawn_items(encoder, records, by_id),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
