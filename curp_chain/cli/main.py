"""The `curp` command line: ingest histories, chat, list users and history."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from curp_chain.cli.common import ModelOptions, open_chat_model
from curp_chain.cli.data import register as register_data
from curp_chain.cli.eval import register as register_eval
from curp_chain.cli.inspect import register as register_inspect
from curp_chain.cli.options import Arg, CommandOptions, add_command, add_options, parse_options
from curp_chain.cli.serve import register as register_serve
from curp_chain.cli.train import register as register_train
from curp_chain.errors import CurpError, InvalidHistoryItemError
from curp_chain.interfaces.history import NewHistoryItem, validate_user_id
from curp_chain.personalization import ingest
from curp_chain.personalization.ingest import DEFAULT_BATCH_SIZE


def read_history_file(path: Path, *, truncate: bool = False) -> list[NewHistoryItem]:
    """The checked items of a history file (see
    `curp_chain.personalization.ingest.read_history_file`)."""
    return [parsed.item for parsed in ingest.read_history_file(path, truncate=truncate)]


class IngestOptions(ModelOptions):
    """`curp ingest`."""

    user: str
    """user id"""
    file: Annotated[str, Arg(positional=True)]
    """JSONL ({"text": ...} per line) or plain text, one item a line"""
    truncate: bool = False
    """cut over-long items instead of rejecting the file"""
    batch_size: int = DEFAULT_BATCH_SIZE
    """items per transaction; a rerun after an interruption skips stored items"""
    no_progress: bool = False
    """no progress bar"""


class ChatOptions(ModelOptions):
    """`curp chat`."""

    user: str | None = None
    """user id (omit for an unpersonalized reply)"""
    message: Annotated[str, Arg(positional=True)]
    """the request to answer"""
    max_tokens: int = 128
    """longest reply generated, in tokens"""
    temperature: float = 0.0
    """sampling temperature; 0 is greedy decoding"""


class HistoryOptions(ModelOptions):
    """`curp history`."""

    user: str
    """user id"""
    limit: int | None = None
    """show at most this many items (default: all)"""


class GlobalOptions(CommandOptions):
    """Options of `curp` itself, before the subcommand."""

    verbose: Annotated[bool, Arg(short="-v")] = False
    """log progress details"""


def cmd_ingest(args: argparse.Namespace) -> int:
    options = parse_options(args, IngestOptions)
    user_id = validate_user_id(options.user)
    items = read_history_file(Path(options.file), truncate=options.truncate)
    if not items:
        raise InvalidHistoryItemError(f"{options.file} holds no history items")
    result = ingest.ingest(
        open_chat_model(options).get_personalizer(),
        user_id,
        items,
        batch_size=options.batch_size,
        progress=not options.no_progress,
    )
    skipped = f" ({result.skipped} already stored, skipped)" if result.skipped else ""
    print(f"stored {result.stored} items for {user_id}{skipped}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    options = parse_options(args, ChatOptions)
    model = open_chat_model(options)
    last = None
    for chunk in model.stream(
        options.message,
        user_id=options.user,
        max_tokens=options.max_tokens,
        temperature=options.temperature,
    ):
        print(chunk.content, end="", flush=True)
        last = chunk
    print()
    curp = last.response_metadata.get("curp", {}) if last is not None else {}
    if not curp.get("personalized"):
        print(f"(not personalized: {curp.get('reason')})", file=sys.stderr)
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    for user in open_chat_model(parse_options(args, ModelOptions)).get_store().list_users():
        print(f"{user.user_id}\t{user.n_items}\t{user.last_item_at or ''}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    options = parse_options(args, HistoryOptions)
    for item in open_chat_model(options).history(options.user, limit=options.limit):
        print(f"{item.id}\t{item.created_at.isoformat()}\t{item.kind}\t{item.text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curp", description=__doc__)
    add_options(parser, GlobalOptions)
    sub = parser.add_subparsers(dest="command", required=True)
    add_command(sub, "ingest", IngestOptions, cmd_ingest, help="add a user's history from a file")
    add_command(sub, "chat", ChatOptions, cmd_chat, help="ask as a user; the reply streams")
    add_command(sub, "users", ModelOptions, cmd_users, help="list users and their item counts")
    add_command(
        sub, "history", HistoryOptions, cmd_history, help="show a user's items, newest first"
    )
    register_train(sub)
    register_eval(sub)
    register_data(sub)
    register_inspect(sub)
    register_serve(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.func(args))
    except CurpError as error:
        print(f"curp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Stores commit whole batches: what was stored stays, and a rerun skips it.
        print("curp: interrupted; run the same command again to finish", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
