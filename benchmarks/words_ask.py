"""Which ask after the item words makes SmolLM2 use them, as served (soft tokens and words)?

    python benchmarks/words_ask.py [--split train] [--limit 126] [--asks all]
        [--echo-ngrams 2] [--threads 1] [--json PATH]

The line before an everyday request is "Some things I wrote about: w1, ..., w8." and an ask
(``curp_chain.model.item_words.WORDS_ASK``). Each ask below is served as ``curp eval
assist`` serves ``curp-words`` (and ``curp-words-shuffled``: another user's words), and the
replies are scored as it scores them. Choose on the training split's users, then confirm on
the held-out users of ``curp eval assist``: the evaluation pairs are not for tuning.
The asks are kept about as short as the shipped one, so the line stays within a fifth of
rag's prompt tokens. ``--echo-ngrams`` also varies how many tokens in a row of the line the
reply may not repeat (``curp_chain.runtime.generation.NO_ECHO_NGRAM``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from assist_keywords import show, write_result

from curp_chain.data.users import default_data_dir
from curp_chain.eval import assist_report
from curp_chain.eval.assist import summary
from curp_chain.eval.harness import EvalConfig, run_eval
from curp_chain.eval.methods import ASSIST_TASK_CHECKPOINT, MethodSettings
from curp_chain.model import item_words
from curp_chain.model.checkpoint import ASSIST_CHECKPOINT
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.runtime import generation

ASKS = (
    "Suggest something that fits them.",
    "Answer with them in mind.",
    "Use one of them in your answer.",
    "Make your answer fit them.",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit", type=int, default=126, help="0: every pair of the split")
    parser.add_argument("--asks", default="all", help="'all', or indices into ASKS: 0,2")
    parser.add_argument(
        "--echo-ngrams", default="2", help="n-gram sizes of the echo ban to try (shipped: 2)"
    )
    parser.add_argument("--methods", default="curp-words,curp-words-shuffled")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("runs/words-ask-cache"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    asks = ASKS if args.asks == "all" else [ASKS[int(i)] for i in args.asks.split(",")]
    encoder = SentenceEncoder()
    result: dict = {"split": args.split, "runs": {}}
    for n in [int(n) for n in args.echo_ngrams.split(",")]:
        generation.NO_ECHO_NGRAM = n  # read per token; the cache folder keys on it
        for ask in asks:
            item_words.WORDS_ASK = ask  # with_words reads it per call; the eval cache keys on it
            run = run_eval(eval_config(args, args.cache / f"echo-{n}"))
            scores, tokens, chance = assist_report.score_methods(
                run.records, run.examples, None, encoder
            )
            result["chance"] = chance
            result["runs"][f"{ask} | echo {n}"] = assist_report.results(scores, tokens, chance)
            for method, rows in scores.items():
                show(f"{ask!r} echo {n} {method}", {**summary(rows), "tokens": tokens[method]})
    write_result(args.json, result)


def eval_config(args: argparse.Namespace, cache: Path) -> EvalConfig:
    settings = MethodSettings(
        checkpoint=ASSIST_CHECKPOINT, task_checkpoint=ASSIST_TASK_CHECKPOINT, threads=args.threads
    )
    return EvalConfig(
        data=default_data_dir(),
        task="assist",
        split=args.split,
        methods=tuple(args.methods.split(",")),
        limit=args.limit or None,
        gold_nll=False,
        cache_dir=cache,
        method_settings=settings,
    )


if __name__ == "__main__":
    main()
