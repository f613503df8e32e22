"""`curp train ...`: the training stages as subcommands.

``register(subparsers)`` adds ``train sources``, ``train codebook`` and ``train projector``
to the ``curp`` command line. Every stage takes ``--config FILE`` (JSON or TOML, keys named
like the options with underscores); options given on the command line win over the file.
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
from pathlib import Path
from typing import Any

from curp_chain.errors import CurpError

logger = logging.getLogger(__name__)

TRAIN_CONFIG_FILE = "train_config.json"
_INTERNAL = {"func", "command", "stage", "config", "verbose", "_parser"}


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


def apply_config_file(args: argparse.Namespace) -> argparse.Namespace:
    """Fill options from ``--config`` where the command line left them at their defaults."""
    if not getattr(args, "config", None):
        return args
    parser: argparse.ArgumentParser = args._parser
    data = _read_config_file(args.config)
    known = {action.dest: action for action in parser._actions}
    unknown = sorted(
        k
        for k in (key.replace("-", "_") for key in data)
        if k not in known and k not in ("stage", "command_line")
    )
    if unknown:
        raise CurpError(f"{args.config}: unknown options {unknown} for `curp train {args.stage}`")
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in known or dest in _INTERNAL:
            continue
        if getattr(args, dest) == known[dest].default:
            setattr(args, dest, value)
    return args


def options_of(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options as a JSON-ready dict (what ``train_config.json`` stores)."""
    options = {k: v for k, v in vars(args).items() if k not in _INTERNAL}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}


def command_line() -> str:
    """The command as typed, for provenance."""
    return "curp " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def save_train_config(args: argparse.Namespace, folder: str | Path) -> Path:
    path = Path(folder) / TRAIN_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"stage": args.stage, "command_line": command_line(), **options_of(args)}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


# --- option groups --------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help="JSON or TOML file of options (keys as option names with underscores, e.g. "
        "max_steps); options on the command line win. A run's train_config.json works here.",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder with pan19/humans.jsonl and lamp7/ (default: $CURP_DATA_DIR, else "
        "../shared/data beside the repository). Read only; nothing is copied.",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where embeddings and paraphrase sources are cached between runs "
        "(default: data-cache/ in the repository)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the user split, sampling and initialisation (default 0)",
    )
    parser.add_argument(
        "--held-out-fraction",
        type=float,
        default=0.1,
        help="fraction of users kept out of training, chosen by a hash of the user id and "
        "seed (default 0.1)",
    )
    parser.add_argument(
        "--max-users",
        type=int,
        default=None,
        help="read at most this many PAN users (default: all; for quick runs)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch / llama.cpp (default: all cores)",
    )


def _add_sources(stages: Any) -> None:
    parser = stages.add_parser(
        "sources",
        help="paraphrase training tweets with an LLM (cached, resumable)",
        description="Make neutral paraphrase sources for training targets with the bundled "
        "SmolLM2 (llama.cpp) or another GGUF model. Results are appended to a JSONL cache "
        "keyed by the tweet, so an interrupted run resumes and `train projector` uses "
        "whatever is there.",
    )
    _common(parser)
    parser.add_argument(
        "--sources",
        default=None,
        help="the JSONL cache file (default: <cache-dir>/sources-smollm2.jsonl)",
    )
    parser.add_argument(
        "--model-path",
        default=None,
        help="GGUF model that paraphrases (default: SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--per-user",
        type=int,
        default=16,
        help="target tweets chosen per training user, taken round-robin over "
        "users so a partial run covers as many users as possible (default 16)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="paraphrase at most this many new tweets in this run",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="stop after this many minutes (default: no limit)",
    )
    parser.add_argument(
        "--backend",
        choices=("llamacpp", "hf"),
        default="llamacpp",
        help="llamacpp: one tweet at a time on the CPU (default); hf: transformers, many "
        "tweets side by side (--batch-size), on a CUDA GPU when one is present",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="tweets paraphrased side by side with --backend hf (default 1; 256 or more on a GPU)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=0,
        help="retry a rejected greedy paraphrase up to this many times with sampling "
        "(temperature 0.8, top-p 0.95) and keep the first accepted one (default 0)",
    )
    parser.add_argument(
        "--shard",
        default="0/1",
        help="I/N: handle only every N-th tweet starting at I, to run N "
        "processes side by side on one cache (default 0/1)",
    )
    parser.set_defaults(func=cmd_sources, _parser=parser)


def cmd_sources(args: argparse.Namespace) -> int:
    import torch

    from curp_chain.defaults import open_hf_backend, open_llamacpp_backend
    from curp_chain.training.data import default_cache_dir, load_pan, split_users, target_order
    from curp_chain.training.sources import SourceCache, generate_sources

    apply_config_file(args)
    try:
        index, count = (int(x) for x in args.shard.split("/"))
    except ValueError:
        raise CurpError(f"--shard {args.shard!r} must look like I/N, e.g. 0/2") from None
    if not 0 <= index < count:
        raise CurpError(f"--shard {args.shard!r}: I must be in [0, N)")
    users = load_pan(args.data_dir, max_users=args.max_users)
    train, _ = split_users(users, args.held_out_fraction, args.seed)
    order = target_order(train, seed=args.seed, per_user=args.per_user)
    tweets = [tweet for _, tweet in order][index::count]
    cache_dir = Path(args.cache_dir or default_cache_dir())
    path = Path(args.sources or cache_dir / "sources-smollm2.jsonl")
    cache = SourceCache(path)
    if args.batch_size < 1 or args.candidates < 0:
        raise CurpError("--batch-size must be at least 1 and --candidates at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend == "hf":
        backend = open_hf_backend(args.model_path)
    else:
        backend = open_llamacpp_backend(args.model_path, n_threads=args.threads, n_ctx=1024)
    logger.info("%d target tweets, %d already in %s", len(tweets), len(cache), path)
    budget = args.time_budget * 60 if args.time_budget else None
    counts = generate_sources(
        backend,
        tweets,
        cache,
        generator=backend.model_id,
        limit=args.limit,
        time_budget_s=budget,
        batch_size=args.batch_size,
        candidates=args.candidates,
        seed=args.seed,
    )
    total = sum(counts.values())
    print(
        f"paraphrased {total} tweets: {json.dumps(counts)}; "
        f"{len(cache.accepted())} accepted sources in {path}"
    )
    return 0


def _add_codebook(stages: Any) -> None:
    parser = stages.add_parser(
        "codebook",
        help="stage 1: train the product-quantization codebook",
        description="Embed PAN users' tweets with the frozen encoder (cached), initialise each "
        "subspace's prototypes with balanced k-means, train them with VQ + commitment + a "
        "differentiable usage term, re-seed dead prototypes, and report usage and "
        "reconstruction error per subspace on held-out users. Writes a checkpoint folder "
        "(codebook trained, the rest initialised) that `train projector --init` starts from.",
    )
    _common(parser)
    parser.add_argument("--out", default=None, help="output checkpoint folder (required)")
    parser.add_argument(
        "--num-subspaces",
        type=int,
        default=None,
        help="M: subspaces the item vector is split into (default: 17 with style features, "
        "16 parts of the 384-d encoder vector and the 24 style features; 8 without)",
    )
    parser.add_argument(
        "--persona-fraction",
        type=float,
        default=0.5,
        help="fraction of training users whose items are rewritten by a style persona, as "
        "`train projector` does (same users, same personas; default 0.5)",
    )
    parser.add_argument(
        "--style",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="append the item's style features (casing, punctuation, mentions, emoji; "
        "curp_chain.style) to the encoder vector, as a codebook subspace of their own "
        "(default: on)",
    )
    parser.add_argument(
        "--codebook-size", type=int, default=64, help="K: prototypes per subspace (default 64)"
    )
    parser.add_argument(
        "--max-history",
        type=int,
        default=24,
        help="history items per user used in training and stored as the "
        "checkpoint's max_history_items (default 24)",
    )
    parser.add_argument(
        "--train-users",
        type=int,
        default=None,
        help="embed only the first N training users in the seeded user order, "
        "the order `train sources` follows (default: all)",
    )
    parser.add_argument(
        "--held-out-items",
        type=int,
        default=10,
        help="items per held-out user used for the report (default 10)",
    )
    parser.add_argument(
        "--lamp7-report-users",
        type=int,
        default=None,
        help="LaMP-7 users whose profiles the report also covers (default: all 300)",
    )
    parser.add_argument(
        "--kmeans-iterations",
        type=int,
        default=12,
        help="balanced k-means iterations per subspace (default 12)",
    )
    parser.add_argument(
        "--steps", type=int, default=1500, help="gradient steps after k-means (default 1500)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1024, help="items per step (default 1024)"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument(
        "--usage-weight",
        type=float,
        default=0.01,
        help="weight of the usage term KL(mean soft assignment || uniform) (default 0.01)",
    )
    parser.add_argument(
        "--usage-temperature",
        type=float,
        default=0.1,
        help="softmax temperature of the soft assignments, relative to the "
        "batch's mean squared distance (default 0.1)",
    )
    parser.add_argument(
        "--reseed-every",
        type=int,
        default=200,
        help="steps between re-seeding prototypes no item chose (default 200)",
    )
    parser.set_defaults(func=cmd_codebook, _parser=parser)


def cmd_codebook(args: argparse.Namespace) -> int:
    from curp_chain.training.codebook import run_codebook_stage

    apply_config_file(args)
    if not args.out:
        raise CurpError("--out is required (the checkpoint folder to write)")
    report = run_codebook_stage({**options_of(args), "command": command_line()})
    save_train_config(args, args.out)
    summary = report["summary"]
    print(
        json.dumps(
            {k: summary[k] for k in ("held_out_pan19", "lamp7_profiles", "wall_s")}, indent=2
        )
    )
    print(f"codebook checkpoint written to {args.out}")
    return 0


def _add_projector(stages: Any) -> None:
    parser = stages.add_parser(
        "projector",
        help="stage 2: align aggregator + projector with the frozen LLM",
        description="Train the aggregator and projector (optionally the codebook) with the "
        "next-token loss of users' real tweets, given an LLM paraphrase of the tweet (from "
        "`train sources`) and the user's other tweets as history, through the transformers "
        "copy of the GGUF the runtime serves. Validates with the gold per-token loss on the "
        "LaMP-7 users: own soft tokens, another user's, none, and a task-only prompt. "
        "--task-only trains that baseline instead. Runs unchanged on a GPU; for several, "
        "start it with `accelerate launch -m curp_chain.training.cli train projector ...`.",
    )
    _common(parser)
    parser.add_argument(
        "--init",
        default=None,
        help="checkpoint to start from: the folder `train codebook` wrote "
        "(required unless --task-only; with --task-only it sets the number "
        "of soft tokens)",
    )
    parser.add_argument(
        "--out", default=None, help="output checkpoint folder (required unless --validate-only)"
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        help="folder for resumable training state, history and samples "
        "(default: <out>/training-state)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the state in --state-dir if there is one",
    )
    parser.add_argument(
        "--task-only",
        action="store_true",
        help="train the task-only baseline: free soft vectors, as many as the "
        "--init checkpoint's soft tokens, with no user input",
    )
    parser.add_argument(
        "--task-init",
        choices=("random", "base"),
        default="random",
        help="how --task-only starts: random vectors at the soft-token scale (default), "
        "or the --init checkpoint's base prompt, which is exactly what CURP's soft tokens "
        "are before training (the history offset starts at zero), so the baseline and "
        "CURP start from the same prompt and differ only in the user information",
    )
    parser.add_argument(
        "--start-prompt",
        default=None,
        help="a task-only checkpoint to start from: with --task-only the baseline goes on "
        "training it; otherwise it becomes the base prompt of the untrained --init "
        "checkpoint, so CURP starts from exactly that prompt (the history offset starts at "
        "zero). Running both from one task prompt, on the same examples and budget, "
        "measures what the user information adds on top of it",
    )
    parser.add_argument(
        "--validate-only",
        action="store_true",
        help="only validate --init (and --task-prompt) on the LaMP-7 users",
    )
    parser.add_argument(
        "--task-prompt",
        default=None,
        help="a task-only checkpoint to add as the fourth validation condition",
    )
    parser.add_argument(
        "--sources",
        default=None,
        help="paraphrase source cache (default: <cache-dir>/sources-smollm2.jsonl)",
    )
    parser.add_argument(
        "--max-source-lines",
        type=int,
        default=None,
        help="read only the first N lines of the source cache, to reproduce a run made "
        "when the cache was that long (default: all)",
    )
    parser.add_argument(
        "--model-path",
        default=None,
        help="GGUF file of the frozen LLM (default: SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--train-codebook",
        action="store_true",
        help="also train the prototypes (straight-through, with the VQ loss); "
        "cached codes of stored histories then go stale and are re-encoded",
    )
    parser.add_argument(
        "--codebook-loss-weight",
        type=float,
        default=1.0,
        help="weight of the VQ loss with --train-codebook (default 1.0)",
    )
    parser.add_argument(
        "--max-history",
        type=int,
        default=24,
        help="history items per example with --task-only and no --init "
        "(otherwise the checkpoint's max_history_items) (default 24)",
    )
    parser.add_argument(
        "--num-soft-tokens",
        type=int,
        default=5,
        help="soft tokens of a task-only prompt without --init (default 5)",
    )
    parser.add_argument(
        "--max-examples",
        type=int,
        default=None,
        help="use at most this many training examples (default: all)",
    )
    parser.add_argument(
        "--shared-offset-weight",
        type=float,
        default=1.0,
        help="weight of the penalty on the mean square of each batch's mean history offset: "
        "keeps what all users share in the base prompt, so that serving other users than "
        "trained on does not shift every soft token (default 1.0)",
    )
    parser.add_argument(
        "--persona-fraction",
        type=float,
        default=0.5,
        help="fraction of training users whose tweets (history and target, not the source) "
        "are all rewritten by one style persona: lowercase, no final punctuation, no "
        "apostrophes, a trailing ellipsis or exclamation marks (curp_chain.training.personas; "
        "default 0.5, 0 turns it off)",
    )
    parser.add_argument(
        "--cleanup-fraction",
        type=float,
        default=0.1,
        help="fraction of examples also added with a clean-up variant of the "
        "tweet as source, as augmentation (default 0.1)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="stop training after this many minutes even if --max-steps is not reached "
        "(the state is saved; the learning-rate schedule still follows --max-steps)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=200,
        help="optimizer steps to train (the step budget) (default 200)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="examples per micro-batch and process (default 8)"
    )
    parser.add_argument(
        "--grad-accum",
        type=int,
        default=1,
        help="micro-batches accumulated per optimizer step (default 1)",
    )
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="peak AdamW learning rate (default 1e-3)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=10,
        help="linear warm-up steps before cosine decay (default 10)",
    )
    parser.add_argument(
        "--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)"
    )
    parser.add_argument(
        "--max-grad-norm",
        type=float,
        default=1.0,
        help="clip the gradient norm to this (0 disables) (default 1.0)",
    )
    parser.add_argument(
        "--max-target-tokens",
        type=int,
        default=64,
        help="target tokens scored per example; longer targets are cut (default 64)",
    )
    parser.add_argument(
        "--val-every",
        type=int,
        default=50,
        help="validate on --val-users users every this many steps; 0 only at the end (default 50)",
    )
    parser.add_argument(
        "--val-users",
        type=int,
        default=48,
        help="LaMP-7 users in the interim validations (default 48)",
    )
    parser.add_argument(
        "--final-val-users",
        type=int,
        default=None,
        help="LaMP-7 users in the final validation (default: all 300)",
    )
    parser.add_argument(
        "--val-batch-size", type=int, default=16, help="examples per validation batch (default 16)"
    )
    parser.add_argument(
        "--save-every",
        type=int,
        default=25,
        help="save resumable state every this many steps (default 25)",
    )
    parser.add_argument(
        "--user-margin-weight",
        type=float,
        default=0.0,
        help="weight of a hinge term that asks each example's loss with its own user's soft "
        "tokens to beat its loss with another user's by --user-margin (default 0: off; "
        "doubles the cost of a step)",
    )
    parser.add_argument(
        "--user-margin",
        type=float,
        default=0.05,
        help="the margin, in nats per token, of --user-margin-weight (default 0.05)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=3,
        help="LaMP-7 users to generate a sample reply for at the end (default 3)",
    )
    parser.set_defaults(func=cmd_projector, _parser=parser)


def cmd_projector(args: argparse.Namespace) -> int:
    from curp_chain.training.align import run_projector_stage

    apply_config_file(args)
    if not args.validate_only and not args.out:
        raise CurpError("--out is required (the checkpoint folder to write)")
    if args.task_init != "random" and not args.task_only:
        raise CurpError("--task-init sets how a --task-only run starts; add --task-only")
    if args.task_init != "random" and args.start_prompt:
        raise CurpError("--task-init and --start-prompt both set the starting prompt; pick one")
    if not args.task_only and args.batch_size < 2:
        raise CurpError(
            "--batch-size must be at least 2: CURP's history offset is centred over the users "
            "of each batch"
        )
    options = options_of(args)
    options["provenance"] = {"command": command_line()}
    summary = run_projector_stage(options)
    if args.validate_only:
        print(json.dumps(summary, indent=2))
        return 0
    save_train_config(args, args.out)
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "trainable_parameters",
                    "trainable_percent_of_llm",
                    "steps",
                    "wall_s",
                    "final_train_loss",
                    "validation",
                )
            },
            indent=2,
        )
    )
    print(f"checkpoint written to {args.out}")
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
    _add_sources(stages)
    _add_codebook(stages)
    _add_projector(stages)
