"""The `curp` command line: ingest histories, chat, list users and history."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from curp_chain.cli.common import open_chat_model
from curp_chain.errors import CurpError, InvalidHistoryItemError
from curp_chain.interfaces.history import NewHistoryItem, validate_user_id
from curp_chain.personalization import ingest
from curp_chain.personalization.ingest import DEFAULT_BATCH_SIZE


def read_history_file(path: Path, *, truncate: bool = False) -> list[NewHistoryItem]:
    """The checked items of a history file (see
    `curp_chain.personalization.ingest.read_history_file`)."""
    return [parsed.item for parsed in ingest.read_history_file(path, truncate=truncate)]


def cmd_ingest(args: argparse.Namespace) -> int:
    user_id = validate_user_id(args.user)
    items = read_history_file(Path(args.file), truncate=args.truncate)
    if not items:
        raise InvalidHistoryItemError(f"{args.file} holds no history items")
    result = ingest.ingest(
        open_chat_model(args).get_personalizer(),
        user_id,
        items,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    skipped = f" ({result.skipped} already stored, skipped)" if result.skipped else ""
    print(f"stored {result.stored} items for {user_id}{skipped}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    model = open_chat_model(args)
    last = None
    for chunk in model.stream(
        args.message, user_id=args.user, max_tokens=args.max_tokens, temperature=args.temperature
    ):
        print(chunk.content, end="", flush=True)
        last = chunk
    print()
    curp = last.response_metadata.get("curp", {}) if last is not None else {}
    if not curp.get("personalized"):
        print(f"(not personalized: {curp.get('reason')})", file=sys.stderr)
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    for user in open_chat_model(args).get_store().list_users():
        print(f"{user.user_id}\t{user.n_items}\t{user.last_item_at or ''}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    for item in open_chat_model(args).history(args.user, limit=args.limit):
        print(f"{item.id}\t{item.created_at.isoformat()}\t{item.kind}\t{item.text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curp", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        help="SQLAlchemy URL of the history store "
        "(default: SQLite in $CURP_HOME or the user data directory)",
    )
    common.add_argument("--checkpoint", help="CURP checkpoint folder (default: the bundled one)")
    common.add_argument(
        "--backend",
        choices=["llamacpp", "hf"],
        default="llamacpp",
        help="LLM backend (default: llamacpp)",
    )
    common.add_argument("--model-path", help="GGUF model file (default: SmolLM2-135M-Instruct)")
    sub = parser.add_subparsers(dest="command", required=True)

    ingest_cmd = sub.add_parser("ingest", parents=[common], help="add a user's history from a file")
    ingest_cmd.add_argument("--user", required=True, help="user id")
    ingest_cmd.add_argument(
        "file", help='JSONL ({"text": ...} per line) or plain text, one item a line'
    )
    ingest_cmd.add_argument(
        "--truncate", action="store_true", help="cut over-long items instead of rejecting the file"
    )
    ingest_cmd.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="items per transaction; a rerun after an interruption skips stored items "
        f"(default: {DEFAULT_BATCH_SIZE})",
    )
    ingest_cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
    ingest_cmd.set_defaults(func=cmd_ingest)

    chat = sub.add_parser("chat", parents=[common], help="ask as a user; the reply streams")
    chat.add_argument("--user", help="user id (omit for an unpersonalized reply)")
    chat.add_argument("message")
    chat.add_argument("--max-tokens", type=int, default=128)
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.set_defaults(func=cmd_chat)

    users = sub.add_parser("users", parents=[common], help="list users and their item counts")
    users.set_defaults(func=cmd_users)

    history = sub.add_parser("history", parents=[common], help="show a user's items, newest first")
    history.add_argument("--user", required=True)
    history.add_argument("--limit", type=int, default=None)
    history.set_defaults(func=cmd_history)

    from curp_chain.cli.data import register as register_data
    from curp_chain.cli.eval import register as register_eval
    from curp_chain.cli.train import register as register_train

    register_train(sub)
    register_eval(sub)
    register_data(sub)
    from curp_chain.cli.inspect import register as register_inspect

    register_inspect(sub, common)
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
