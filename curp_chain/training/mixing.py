"""Combining several tasks' examples into one training set (`curp data mix`)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from curp_chain.data.generic import ExampleRecord, Histories


@dataclass(frozen=True)
class MixSource:
    """One task's examples and the histories of its users."""

    name: str
    examples: Sequence[ExampleRecord]
    histories: Histories


def mix_examples(
    sources: Sequence[MixSource],
    *,
    per_user: int | None = None,
    per_source: int | None = None,
    seed: int = 0,
) -> tuple[list[ExampleRecord], Histories]:
    """A seeded sample of each source (at most `per_user` examples of a user, then at most
    `per_source` of the source), shuffled together; the histories of the users kept.

    Capping per user first keeps a few prolific users (one Enron sender wrote 991 emails)
    from being most of a task's share.
    """
    if any(cap is not None and cap < 1 for cap in (per_user, per_source)):
        raise ValueError("--per-user and --per-source must be at least 1")
    rng = random.Random(seed)
    mixed: list[ExampleRecord] = []
    histories: Histories = {}
    for source in sources:
        clash = sorted(set(source.histories) & set(histories))
        if clash:
            raise ValueError(
                f"{source.name}: user id {clash[0]!r} is also in an earlier folder; "
                "give each task's users their own prefix"
            )
        by_user: dict[str, list[ExampleRecord]] = defaultdict(list)
        for example in source.examples:
            by_user[example.user_id].append(example)
        kept: list[ExampleRecord] = []
        for user in sorted(by_user):
            examples = by_user[user]
            kept.extend(rng.sample(examples, min(len(examples), per_user or len(examples))))
        if per_source is not None and len(kept) > per_source:
            kept = rng.sample(kept, per_source)
        mixed.extend(kept)
        users = {e.user_id for e in kept}
        histories.update({u: items for u, items in source.histories.items() if u in users})
    rng.shuffle(mixed)
    return mixed, histories
