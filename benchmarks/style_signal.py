"""How much of a LaMP-7 user's style their history predicts, feature by feature.

For each style feature of :mod:`curp_chain.model.style`, the correlation over users between the
feature's mean over the user's profile and its value on the gold tweet, next to the
correlation between the request (the LLM paraphrase to rewrite) and the gold tweet. A
feature the profile predicts and the request does not is something only the user's history
can tell the model.

With ``--sources`` (a `curp train sources` cache) it also compares how often each feature
occurs in the PAN 2019 training pairs (paraphrase source, real tweet) and in LaMP-7
(request, gold): training data that never shows a style cannot teach it.

    python benchmarks/style_signal.py --data ../shared/data/lamp7 \
        --sources data-cache/sources-smollm2.jsonl
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from curp_chain.data.sources import SourceCache
from curp_chain.model.style import STYLE_FEATURES, style_features
from curp_chain.tasks.lamp7 import LampExample, load_lamp


def correlation(xs: list[float], ys: list[float]) -> float | None:
    if statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return None
    return statistics.correlation(xs, ys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lamp7"))
    parser.add_argument("--sources", type=Path, default=None, help="a paraphrase source cache")
    args = parser.parse_args()
    examples = load_lamp(args.data)
    predictability(examples)
    if args.sources:
        prevalence(examples, SourceCache(args.sources).accepted())


def predictability(examples: list[LampExample]) -> None:
    profiles = [[style_features(item.text) for item in e.profile] for e in examples]
    golds = [style_features(e.gold) for e in examples]
    requests = [style_features(e.source) for e in examples]
    print(f"LaMP-7 users: {len(examples)}\n")
    print("| feature | mean on gold | corr(profile mean, gold) | corr(request, gold) |")
    print("|---|---|---|---|")
    for i, name in enumerate(STYLE_FEATURES):
        profile_mean = [statistics.mean(row[i] for row in rows) for rows in profiles]
        gold = [row[i] for row in golds]
        request = [row[i] for row in requests]
        cells = [correlation(profile_mean, gold), correlation(request, gold)]
        shown = ["–" if c is None else f"{c:.2f}" for c in cells]
        print(f"| {name} | {statistics.mean(gold):.3f} | {shown[0]} | {shown[1]} |")


def prevalence(examples: list[LampExample], sources: dict[str, str]) -> None:
    pairs = list(sources.items())
    print(f"\nShare of texts with each feature: {len(pairs)} PAN training pairs, LaMP-7 users\n")
    print("| feature | PAN source | PAN tweet | LaMP-7 request | LaMP-7 gold |")
    print("|---|---|---|---|---|")
    columns = [
        [src for _, src in pairs],
        [tweet for tweet, _ in pairs],
        [e.source for e in examples],
        [e.gold for e in examples],
    ]
    features = [[style_features(text) for text in column] for column in columns]
    for i, name in enumerate(STYLE_FEATURES):
        shares = [statistics.mean(row[i] for row in rows) for rows in features]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in shares) + " |")


if __name__ == "__main__":
    main()
