"""`curp data`: write a task's data in the generic format, and check files in that format."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from curp_chain.cli.options import Arg, CommandOptions, add_command, parse_options
from curp_chain.tasks import TASKS, get_task

if TYPE_CHECKING:
    from curp_chain.data.generic import ExampleRecord, Histories

EXAMPLES_FILE = "examples.jsonl"
HISTORIES_FILE = "histories.jsonl"


class ExportOptions(CommandOptions):
    """`curp data export`."""

    task: Annotated[str, Arg(positional=True, choices=tuple(TASKS))]
    """the task whose data to export"""
    data: str | None = None
    """the shared data folder (with <task>/ inside) or the task's own folder (default:
    $CURP_DATA_DIR, else ../shared/data beside the repository)"""
    split: str = "train"
    """train or dev (personachat: dev only)"""
    out: str
    """folder to write the two files into"""
    sources: str | None = None
    """lamp7 train only: the paraphrase source cache of `curp train sources` (default:
    data-cache/sources-smollm2.jsonl)"""
    seed: int = 0
    """lamp7 train only: the seed of the PAN user split"""


class MixOptions(CommandOptions):
    """`curp data mix`."""

    sources: Annotated[list[str], Arg(positional=True)]
    """folders to combine"""
    out: str
    """folder to write the two files into"""
    per_user: int | None = None
    """examples kept per user (default: all)"""
    per_source: int | None = None
    """examples kept per folder (default: all)"""
    seed: int = 0
    """seed of the sample"""


class CheckOptions(CommandOptions):
    """`curp data check`."""

    examples: str
    """examples JSONL file"""
    histories: str
    """histories JSONL file or store URL"""


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
    from curp_chain.tasks.lamp7 import training_records

    options = parse_options(args, ExportOptions)
    task = get_task(options.task)
    data = options.data or default_data_dir()
    if task.name == "lamp7" and options.split == "train":
        examples, histories = training_records(data, options.sources, seed=options.seed)
    else:
        examples, histories = task.records(data, options.split)
    return _write_folder(Path(options.out), examples, histories)


def cmd_check(args: argparse.Namespace) -> int:
    from curp_chain.data.generic import check_users, read_examples, read_histories

    options = parse_options(args, CheckOptions)
    examples = read_examples(options.examples)
    histories = read_histories(options.histories)
    check_users(examples, histories, str(options.examples))
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

    options = parse_options(args, MixOptions)
    sources = []
    for folder in options.sources:
        path = Path(folder)
        examples = read_examples(path / EXAMPLES_FILE)
        histories = read_histories(path / HISTORIES_FILE)
        sources.append(MixSource(str(path), examples, histories))
    try:
        examples, histories = mix_examples(
            sources, per_user=options.per_user, per_source=options.per_source, seed=options.seed
        )
    except ValueError as exc:
        raise DataFormatError(str(exc)) from exc
    return _write_folder(Path(options.out), examples, histories)


def register(subparsers: Any) -> None:
    """Add ``data export``, ``data mix`` and ``data check`` to the ``curp`` subcommands."""
    data = subparsers.add_parser(
        "data",
        help="write a task's data in the generic format, or check files in it",
        description="The generic format (docs/training.md): examples.jsonl, one "
        '{"user_id", "messages", "response", "item_id"?} per line, and histories.jsonl, one '
        '{"user_id", "items"} per line.',
    )
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    add_command(
        commands,
        "export",
        ExportOptions,
        cmd_export,
        help="write a task's split as examples.jsonl + histories.jsonl",
        description="Read a task's data folder and write its split in the generic format "
        "that `curp train --examples/--histories` and `curp eval` read.",
    )
    add_command(
        commands,
        "mix",
        MixOptions,
        cmd_mix,
        help="combine exported folders into one training set",
        description="Read several folders of examples.jsonl + histories.jsonl (e.g. from "
        "`curp data export`), keep at most --per-user examples of each user and --per-source "
        "of each folder (a seeded sample), shuffle them together and write one folder. User "
        "ids must not repeat across folders (the task adapters prefix them).",
    )
    add_command(
        commands,
        "check",
        CheckOptions,
        cmd_check,
        help="validate an examples file and a histories file (or store URL)",
        description="Read both, report the first line that does not fit the format, and "
        "print counts.",
    )
