"""The `curp` command line: ingest histories, chat, list users and history."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from curp_chain.errors import CurpError, InvalidHistoryItemError
from curp_chain.history import NewHistoryItem

ITEM_FIELDS = {"text", "kind", "created_at", "metadata"}


def read_history_file(path: Path) -> list[NewHistoryItem]:
    """Items from a JSONL file (one {"text", "kind"?, "created_at"?, "metadata"?} per line)
    or, for any other suffix, from plain text with one item per non-empty line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CurpError(f"cannot read {path}: {error}") from None
    if path.suffix not in (".jsonl", ".json"):
        return [NewHistoryItem(line) for line in lines if line.strip()]
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidHistoryItemError(f"{path}:{number}: not valid JSON ({error})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InvalidHistoryItemError(
                f'{path}:{number}: expected an object with a "text" string'
            )
        unknown = set(record) - ITEM_FIELDS
        if unknown:
            raise InvalidHistoryItemError(f"{path}:{number}: unknown fields {sorted(unknown)}")
        created = record.get("created_at")
        try:
            created_at = datetime.fromisoformat(created) if created else None
        except (TypeError, ValueError):
            raise InvalidHistoryItemError(
                f"{path}:{number}: created_at {created!r} is not an ISO 8601 date"
            ) from None
        items.append(
            NewHistoryItem(
                record["text"],
                kind=record.get("kind", "text"),
                created_at=created_at,
                metadata=record.get("metadata") or {},
            )
        )
    return items


def _model(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from curp_chain.chat_model import CurpChatModel

    return CurpChatModel(
        checkpoint=args.checkpoint,
        store_url=args.store,
        backend_kind=args.backend,
        model_path=args.model_path,
    )


def cmd_ingest(args: argparse.Namespace) -> int:
    items = read_history_file(Path(args.file))
    if not items:
        raise InvalidHistoryItemError(f"{args.file} holds no history items")
    stored = (
        _model(args)
        .get_personalizer()
        .add_history(args.user, items, truncate=args.truncate, progress=True)
    )
    print(f"stored {len(stored)} items for {args.user}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    model = _model(args)
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
    for user in _model(args).get_store().list_users():
        print(f"{user.user_id}\t{user.n_items}\t{user.last_item_at or ''}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    for item in _model(args).history(args.user, limit=args.limit):
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

    ingest = sub.add_parser("ingest", parents=[common], help="add a user's history from a file")
    ingest.add_argument("--user", required=True, help="user id")
    ingest.add_argument(
        "file", help='JSONL ({"text": ...} per line) or plain text, one item a line'
    )
    ingest.add_argument(
        "--truncate", action="store_true", help="cut over-long items instead of rejecting the file"
    )
    ingest.set_defaults(func=cmd_ingest)

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

    from curp_chain.eval.cli import register as register_eval
    from curp_chain.training.cli import register as register_train

    register_train(sub)
    register_eval(sub)
    from curp_chain.inspection_cli import register as register_inspect

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


if __name__ == "__main__":
    sys.exit(main())
