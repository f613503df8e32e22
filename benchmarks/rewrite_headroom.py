"""How much room does LaMP-7 leave above returning the request unchanged?

On LaMP-7 the text to paraphrase is itself close to the user's tweet, and copying it scores
higher on ROUGE than any prompted method of a small LLM. For each method this benchmark
generates the greedy reply (the settings of ``curp eval``) for the first ``--users`` users
and asks, for the users where the reply is not a copy: how often does the rewrite beat the
source on ROUGE-1, what would always picking the better of the two score (an oracle), and
what does picking by the method's own likelihood score (the lower mean per-token loss of
"reply then end of turn" after the method's prompt, on the transformers backend)?

    python benchmarks/rewrite_headroom.py --data ../shared/data/lamp7 --users 300 \\
        --methods curp,task --threads 2
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from curp_chain.eval.harness import EvalConfig, Harness, generate, gold_nll
from curp_chain.eval.metrics import clean_reply, normalized, rouge


@dataclass(frozen=True)
class Outcome:
    reply: float
    """ROUGE-1 of the greedy reply."""
    source: float
    """ROUGE-1 of the request's text returned unchanged."""
    copied: bool
    likelier_source: bool
    """The method's prompt gives the source a lower per-token loss than its own reply."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="LaMP-7 folder")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--methods", default="curp,task")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    config = EvalConfig(
        data=args.data,
        methods=args.methods,
        limit=args.users,
        method_settings={"threads": args.threads},
    )
    harness = Harness(config)
    for method in harness.methods:
        method.prepare()
    llm, scorer = harness.resources.llm, harness.resources.scorer
    outcomes: dict[str, list[Outcome]] = {method.name: [] for method in harness.methods}
    for example in tqdm(harness.examples, desc="users"):
        source = rouge(example.source, example.gold).rouge1
        for method in harness.methods:
            prompt = method.prompt(example)
            assert prompt is not None, "copy needs no comparison with itself"
            reply = clean_reply(generate(llm, prompt, harness.params).text)
            reply_loss = gold_nll(scorer, prompt, reply)[0] if reply.strip() else float("inf")
            outcomes[method.name].append(
                Outcome(
                    reply=rouge(reply, example.gold).rouge1,
                    source=source,
                    copied=normalized(reply) == normalized(example.source),
                    likelier_source=gold_nll(scorer, prompt, example.source)[0] < reply_loss,
                )
            )

    print(f"\nLaMP-7 users 1-{len(harness.examples)}, ROUGE-1:\n")
    print(
        "| method | greedy | copy | not copies | rewrite beats copy | oracle (not copies) "
        "| copy (not copies) | picked by likelihood |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in outcomes.items():
        greedy = np.array([o.reply for o in rows])
        copy = np.array([o.source for o in rows])
        rewrites = [o for o in rows if not o.copied]
        better = sum(o.reply > o.source for o in rewrites)
        oracle = np.mean([max(o.reply, o.source) for o in rewrites]) if rewrites else np.nan
        copy_there = np.mean([o.source for o in rewrites]) if rewrites else np.nan
        picked = np.mean([o.source if o.likelier_source else o.reply for o in rows])
        print(
            f"| {name} | {greedy.mean():.4f} | {copy.mean():.4f} | {len(rewrites)} | {better} "
            f"| {oracle:.4f} | {copy_there:.4f} | {picked:.4f} |"
        )


if __name__ == "__main__":
    main()
