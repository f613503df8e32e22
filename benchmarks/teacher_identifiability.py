"""How much of its user the teacher's training answers carry, for users with many answers.

    python benchmarks/teacher_identifiability.py [--train-users 60] [--min-answers 0]
        [--pairs-of FOLDER] [--json PATH]

A student can learn from the teacher's answers only as much of the user as they hold. For
the first N training users (the ones `python -m curp_chain.training.teacher --train-users N
--train-per-user 12` answers many requests for), each cached answer is scored as `curp eval
assist` scores a reply (curp_chain.eval.assist): is its user the nearest of the N by history
centroid (encoder) and by TF-IDF (lexical)? All answers and the kept ones, with the number
kept per user and the number a stricter tailored bar keeps. ``--min-answers K`` keeps only
the users with at least K kept answers, as `benchmarks/per_user_prompts.py` does.
``--pairs-of FOLDER`` keeps only the (user, request) pairs that the answers in FOLDER answer:
the greedy answers to the pairs a best-of-n run (`--samples N`) answered, to compare the two.
Each answer also reports its tailored score (mean, and the share of kept answers).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

from curp_chain.data.users import default_data_dir
from curp_chain.eval.assist import AssistScorer, summary
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.runtime.prompt import ChatTurn
from curp_chain.tasks.assist import (
    AssistFilters,
    candidates,
    interleave_users,
    is_kept,
    load_requests,
    load_users,
)
from curp_chain.tasks.assist_task import answers_dir, kept_answers, read_answers
from curp_chain.tasks.base import ProfileItem, TaskExample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-users", type=int, default=60)
    parser.add_argument("--min-answers", type=int, default=0, help="kept answers a user needs")
    parser.add_argument("--pairs-of", type=Path, help="only the pairs answered in this folder")
    parser.add_argument("--strict-tailored", type=float, default=0.1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    users = interleave_users(load_users(default_data_dir(), "train"))[: args.train_users]
    kept = Counter(r["user_id"] for r in kept_answers(answers_dir(), "train"))
    users = [u for u in users if kept[u.user_id] >= args.min_answers]
    by_id = {u.user_id: u for u in users}
    requests = {r.id: r for r in load_requests("all")}
    records = [
        r
        for r in read_answers(answers_dir())
        if r.get("split") == "train" and r["user_id"] in by_id and r.get("answer")
    ]
    if args.pairs_of:
        pairs = {(r["user_id"], r["request_id"]) for r in read_answers(args.pairs_of)}
        records = [r for r in records if (r["user_id"], r["request_id"]) in pairs]
    examples = [
        TaskExample(
            id=r["key"],
            user_id=r["user_id"],
            messages=(ChatTurn("user", requests[r["request_id"]].text),),
            gold=r["answer"],
            profile=tuple(ProfileItem(i.id, i.text) for i in candidates(by_id[r["user_id"]])),
            source="",
        )
        for r in records
    ]
    scorer = AssistScorer(examples, SentenceEncoder())
    scores = scorer.score([r["answer"] for r in records], examples)
    strict = AssistFilters(min_tailored=args.strict_tailored)
    result: dict = {"users": len(users), "chance": 1 / len(users), "answers": len(records)}
    for name, keep in (
        ("all answers", lambda r: True),
        ("kept", is_kept),
        (f"kept, tailored >= {args.strict_tailored}", lambda r: is_kept(r, strict)),
    ):
        chosen = [s for s, r in zip(scores, records, strict=True) if keep(r)]
        per_user = [sum(keep(r) for r in records if r["user_id"] == u.user_id) for u in users]
        tailored = [r["scores"]["tailored"] for r in records if keep(r)]
        result[name] = summary(chosen) | {
            "per_user_median": statistics.median(per_user),
            "tailored_mean": statistics.fmean(tailored) if tailored else 0.0,
        }
        shown = {
            m: round(result[name][m], 3)
            for m in ("n", "top1", "top1_lexical", "gain", "tailored_mean")
        }
        print(f"{name}: {shown}, per user (median) {result[name]['per_user_median']}")
    print(f"chance {result['chance']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
