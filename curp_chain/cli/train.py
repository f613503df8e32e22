"""`curp train ...`: the training stages as subcommands.

``register(subparsers)`` adds ``train sources``, ``train codebook``, ``train projector`` and
``train words`` to the ``curp`` command line. Every stage takes ``--config FILE`` (JSON or
TOML, keys named like the options with underscores); options given on the command line win
over the file.
The options a run used are saved beside its output as ``train_config.json``, which
``--config`` accepts to repeat the run exactly.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from curp_chain.cli.options import PROG, add_options, validate_options
from curp_chain.errors import CurpError
from curp_chain.training.options import (
    STAGES,
    CodebookOptions,
    ProjectorOptions,
    SourcesOptions,
    StageOptions,
    WordsOptions,
    as_dict,
)

logger = logging.getLogger(__name__)

TRAIN_CONFIG_FILE = "train_config.json"
_RECORD_KEYS = ("stage", "command_line")
"""Keys of a saved train_config.json that are a record of the run, not options."""


def _read_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise CurpError(f"config file {file} not found")
    text = file.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise CurpError(
            f"{file} is not valid {'TOML' if file.suffix == '.toml' else 'JSON'}: {error}"
        ) from None
    if not isinstance(data, dict):
        raise CurpError(f"{file} must hold an object of option names and values")
    return data


def resolve_options(args: argparse.Namespace) -> StageOptions:
    """The stage's typed options: what was typed on the command line, then the ``--config``
    file for the rest, then the defaults. A typed option always wins, even when it equals
    its default (options the command line left out are absent from ``args``)."""
    model = STAGES[args.stage]
    typed = {k: v for k, v in vars(args).items() if k in model.model_fields}
    from_file: dict[str, Any] = {}
    if getattr(args, "config", None):
        data = _read_config_file(args.config)
        from_file = {k.replace("-", "_"): v for k, v in data.items() if k not in _RECORD_KEYS}
        unknown = sorted(set(from_file) - set(model.model_fields))
        if unknown:
            raise CurpError(
                f"{args.config}: unknown options {unknown} for `curp train {args.stage}`"
            )
    return validate_options(model, {**from_file, **typed}, f"curp train {args.stage}")


def apply_config_file(args: argparse.Namespace) -> argparse.Namespace:
    """Resolve the options (command line, then ``--config``, then defaults) into ``args``."""
    vars(args).update(resolve_options(args).model_dump())
    return args


def options_of(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options as a JSON-ready dict (what ``train_config.json`` stores)."""
    return as_dict(resolve_options(args))


def command_line() -> str:
    """The command as typed, for provenance."""
    return "curp " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def save_train_config(
    args: argparse.Namespace, folder: str | Path, options: StageOptions | None = None
) -> Path:
    """Write the resolved options, with the stage and the command as typed, to
    ``folder/train_config.json``; ``--config`` accepts the file to repeat the run."""
    path = Path(folder) / TRAIN_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    resolved = as_dict(options or resolve_options(args))
    record = {"stage": args.stage, "command_line": command_line(), **resolved}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


# --- the parsers, built from the option models ---------------------------------------

_CONFIG_HELP = (
    "JSON or TOML file of options (keys as option names with underscores, e.g. max_steps); "
    "options typed on the command line win. A run's train_config.json works here."
)


_DESCRIPTIONS = {
    "sources": (
        "paraphrase training tweets with an LLM (cached, resumable)",
        "Make neutral paraphrase sources for training targets with the bundled SmolLM2 "
        "(llama.cpp) or another GGUF model. Results are appended to a JSONL cache keyed by "
        "the tweet, so an interrupted run resumes and `train projector` uses whatever is "
        "there.",
    ),
    "codebook": (
        "stage 1: train the product-quantization codebook",
        "Embed the training users' history items with the frozen encoder (cached), "
        "initialise each subspace's prototypes with balanced k-means, train them with VQ + "
        "commitment + a differentiable usage term, re-seed dead prototypes, and report usage "
        "and reconstruction error per subspace on held-out users. Users come from "
        "--histories (the generic format) or, by default, PAN 2019. Writes a checkpoint "
        "folder (codebook trained, the rest initialised) that `train projector --init` "
        "starts from.",
    ),
    "projector": (
        "stage 2: align aggregator + projector with the frozen LLM",
        "Train the aggregator and projector (optionally the codebook) with the next-token "
        "loss of what users wrote, given the request and their other items as history, "
        "through the transformers copy of the GGUF the runtime serves. Data: --examples and "
        "--histories in the generic format, or by default the LaMP-7 adapter (PAN tweets "
        "with paraphrase sources from `train sources`, validated on LaMP-7 users). "
        "Validates with the gold per-token loss: own soft tokens, another user's, none, and "
        "a task-only prompt. --task-only trains that baseline instead. Runs unchanged on a "
        "GPU; for several, start it with `accelerate launch -m curp_chain.cli.train "
        "train projector ...`.",
    ),
    "words": (
        "train the item-word decoder an assist checkpoint places before everyday requests",
        "Train a linear decoder from an item's codes (through the codebook) to the words it "
        "holds, on the items of the everyday-answer training users (PAN tweets, Reddit "
        "posts, Enron subject lines); no LLM is involved. Serving, the words of the user's "
        "items nearest an everyday request stand before it. Writes item_words.safetensors "
        'and item_words.json into --out (docs/training.md, "Item words").',
    ),
}


def _add_stage(stages: Any, name: str, func: Callable[[argparse.Namespace], int]) -> None:
    summary, description = _DESCRIPTIONS[name]
    parser = stages.add_parser(name, help=summary, description=description)
    parser.add_argument("--config", help=_CONFIG_HELP)
    # Typed options only: the --config file fills the rest (see resolve_options).
    add_options(parser, STAGES[name], typed_only=True)
    parser.set_defaults(func=func, **{PROG: parser.prog})


def cmd_sources(args: argparse.Namespace) -> int:
    import torch

    from curp_chain.data.sources import SourceCache
    from curp_chain.data.users import default_cache_dir, load_pan, split_users, target_order
    from curp_chain.runtime.defaults import open_hf_backend, open_llamacpp_backend
    from curp_chain.training.sources import generate_sources

    options = resolve_options(args)
    assert isinstance(options, SourcesOptions)
    index, count = (int(x) for x in options.shard.split("/"))
    users = load_pan(options.data_dir, max_users=options.max_users)
    train, _ = split_users(users, options.held_out_fraction, options.seed)
    order = target_order(train, seed=options.seed, per_user=options.per_user)
    tweets = [tweet for _, tweet in order][index::count]
    cache_dir = Path(options.cache_dir or default_cache_dir())
    path = Path(options.sources or cache_dir / "sources-smollm2.jsonl")
    cache = SourceCache(path)
    if options.threads:
        torch.set_num_threads(options.threads)
    if options.backend == "hf":
        backend = open_hf_backend(options.model_path)
    else:
        backend = open_llamacpp_backend(options.model_path, n_threads=options.threads, n_ctx=1024)
    logger.info("%d target tweets, %d already in %s", len(tweets), len(cache), path)
    counts = generate_sources(
        backend,
        tweets,
        cache,
        generator=backend.model_id,
        limit=options.limit,
        time_budget_s=options.time_budget * 60 if options.time_budget else None,
        batch_size=options.batch_size,
        candidates=options.candidates,
        seed=options.seed,
    )
    print(
        f"paraphrased {sum(counts.values())} tweets: {json.dumps(counts)}; "
        f"{len(cache.accepted())} accepted sources in {path}"
    )
    return 0


def cmd_codebook(args: argparse.Namespace) -> int:
    from curp_chain.training.codebook import run_codebook_stage

    options = resolve_options(args)
    assert isinstance(options, CodebookOptions)
    report = run_codebook_stage(options, command_line())
    out = save_train_config(args, str(options.out), options)
    summary = report["summary"]
    shown = ("held_out", "held_out_pan19", "lamp7_profiles", "wall_s")
    print(json.dumps({k: summary[k] for k in shown if k in summary}, indent=2))
    print(f"codebook checkpoint written to {out.parent}")
    return 0


_PROJECTOR_SUMMARY = (
    "trainable_parameters",
    "trainable_percent_of_llm",
    "steps",
    "wall_s",
    "final_train_loss",
    "validation",
)


def cmd_projector(args: argparse.Namespace) -> int:
    from curp_chain.training.align import run_projector_stage

    options = resolve_options(args)
    assert isinstance(options, ProjectorOptions)
    summary = run_projector_stage(options, {"command": command_line()})
    if options.validate_only:
        print(json.dumps(summary, indent=2))
        return 0
    out = save_train_config(args, str(options.out), options)
    print(json.dumps({k: summary[k] for k in _PROJECTOR_SUMMARY}, indent=2))
    print(f"checkpoint written to {out.parent}")
    return 0


def cmd_words(args: argparse.Namespace) -> int:
    from curp_chain.training.item_words import train_item_words

    options = resolve_options(args)
    assert isinstance(options, WordsOptions)
    summary = train_item_words(options, command_line())
    print(json.dumps(summary["history"][-1], indent=2))
    print(f"item-word decoder written to {options.out}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``train`` with its stages to the ``curp`` subcommands."""
    train = subparsers.add_parser(
        "train",
        help="train a CURP checkpoint (codebook, then projector)",
        description="Train CURP in stages: `sources` (LLM paraphrases of training tweets), "
        "`codebook` (stage 1: product-quantization prototypes) and `projector` (stage 2: "
        "aggregator + projector aligned with the frozen LLM). Each stage has its own --help.",
    )
    stages = train.add_subparsers(dest="stage", required=True, metavar="STAGE")
    _add_stage(stages, "sources", cmd_sources)
    _add_stage(stages, "codebook", cmd_codebook)
    _add_stage(stages, "projector", cmd_projector)
    _add_stage(stages, "words", cmd_words)
