"""`curp data`: write a task's data in the generic format, and check files in that format."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from curp_chain.data.generic import ExampleRecord, Histories

EXAMPLES_FILE = "examples.jsonl"
HISTORIES_FILE = "histories.jsonl"


def _write_folder(out: Path, examples: list[ExampleRecord], histories: Histories) -> int:
    """Write the two files of the generic format into ``out`` and say what was written."""
    from curp_chain.data.generic import write_examples, write_histories

    write_examples(out / EXAMPLES_FILE, examples)
    write_histories(out / HISTORIES_FILE, histories)
    users = len({e.user_id for e in examples})
    print(f"{len(examples)} examples of {users} users, {len(histories)} histories in {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from curp_chain.data.users import default_data_dir
    from curp_chain.tasks import get_task
    from curp_chain.tasks.lamp7 import training_records

    task = get_task(args.task)
    args.data = args.data or default_data_dir()
    if task.name == "lamp7" and args.split == "train":
        examples, histories = training_records(args.data, args.sources, seed=args.seed)
    else:
        examples, histories = task.records(args.data, args.split)
    return _write_folder(Path(args.out), examples, histories)


def cmd_check(args: argparse.Namespace) -> int:
    from curp_chain.data.generic import check_users, read_examples, read_histories

    examples = read_examples(args.examples)
    histories = read_histories(args.histories)
    check_users(examples, histories, str(args.examples))
    summary: dict[str, Any] = {
        "examples": len(examples),
        "users": len({e.user_id for e in examples}),
        "histories": len(histories),
        "history_items": sum(len(items) for items in histories.values()),
    }
    print(json.dumps(summary, indent=2))
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    from curp_chain.data.generic import DataFormatError, read_examples, read_histories
    from curp_chain.training.mixing import MixSource, mix_examples

    sources = []
    for folder in args.sources:
        path = Path(folder)
        examples = read_examples(path / EXAMPLES_FILE)
        histories = read_histories(path / HISTORIES_FILE)
        sources.append(MixSource(str(path), examples, histories))
    try:
        examples, histories = mix_examples(
            sources, per_user=args.per_user, per_source=args.per_source, seed=args.seed
        )
    except ValueError as exc:
        raise DataFormatError(str(exc)) from exc
    return _write_folder(Path(args.out), examples, histories)


def register(subparsers: Any) -> None:
    """Add ``data export`` and ``data check`` to the ``curp`` subcommands."""
    from curp_chain.tasks import TASKS

    data = subparsers.add_parser(
        "data",
        help="write a task's data in the generic format, or check files in it",
        description="The generic format (docs/training.md): examples.jsonl, one "
        '{"user_id", "messages", "response", "item_id"?} per line, and histories.jsonl, one '
        '{"user_id", "items"} per line.',
    )
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    export = commands.add_parser(
        "export",
        help="write a task's split as examples.jsonl + histories.jsonl",
        description="Read a task's data folder and write its split in the generic format "
        "that `curp train --examples/--histories` and `curp eval` read.",
    )
    export.add_argument("task", choices=list(TASKS), help="the task whose data to export")
    export.add_argument(
        "--data",
        default=None,
        help="the shared data folder (with <task>/ inside) or the task's own folder "
        "(default: $CURP_DATA_DIR, else ../shared/data beside the repository)",
    )
    export.add_argument(
        "--split", default="train", help="train or dev (personachat: dev only; default train)"
    )
    export.add_argument("--out", required=True, help="folder to write the two files into")
    export.add_argument(
        "--sources",
        default=None,
        help="lamp7 train only: the paraphrase source cache of `curp train sources` "
        "(default: data-cache/sources-smollm2.jsonl)",
    )
    export.add_argument(
        "--seed",
        type=int,
        default=0,
        help="lamp7 train only: the seed of the PAN user split (default 0)",
    )
    export.set_defaults(func=cmd_export)
    mix = commands.add_parser(
        "mix",
        help="combine exported folders into one training set",
        description="Read several folders of examples.jsonl + histories.jsonl (e.g. from "
        "`curp data export`), keep at most --per-user examples of each user and --per-source "
        "of each folder (a seeded sample), shuffle them together and write one folder. User "
        "ids must not repeat across folders (the task adapters prefix them).",
    )
    mix.add_argument("sources", nargs="+", help="folders to combine")
    mix.add_argument("--out", required=True, help="folder to write the two files into")
    mix.add_argument(
        "--per-user", type=int, default=None, help="examples kept per user (default: all)"
    )
    mix.add_argument(
        "--per-source", type=int, default=None, help="examples kept per folder (default: all)"
    )
    mix.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    mix.set_defaults(func=cmd_mix)
    check = commands.add_parser(
        "check",
        help="validate an examples file and a histories file (or store URL)",
        description="Read both, report the first line that does not fit the format, and "
        "print counts.",
    )
    check.add_argument("--examples", required=True, help="examples JSONL file")
    check.add_argument("--histories", required=True, help="histories JSONL file or store URL")
    check.set_defaults(func=cmd_check)
