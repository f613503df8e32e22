"""Reading a history file for `curp ingest`, and storing it in resumable batches.

The file says what is stored, unchanged: plain text is split on "\\n" (and "\\r\\n") only, so
U+2028, NEL, form feed or a lone CR inside a line stay in its item; a UTF-8 byte-order mark
is dropped; JSONL fields are kept as given or refused, never replaced by defaults. Every bad
line is reported with its number before anything is encoded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curp_chain.data.jsonl import DataFormatError, iter_jsonl, iter_lines, json_type
from curp_chain.errors import CurpError, InvalidHistoryItemError
from curp_chain.interfaces.history import NewHistoryItem, content_hash, normalize_items

if TYPE_CHECKING:
    from curp_chain.personalization.personalizer import Personalizer

ITEM_FIELDS = {"text", "kind", "created_at", "metadata"}
JSONL_SUFFIXES = (".jsonl", ".json")
DEFAULT_BATCH_SIZE = 256
"""Items per transaction: a kill loses at most this much encoding work."""
MAX_REPORTED_LINES = 20


class HistoryFileError(InvalidHistoryItemError, DataFormatError):
    """Lines of a history file that cannot be stored; the message lists each as
    ``file:line: problem``, and nothing was stored."""


@dataclass(frozen=True)
class ParsedItem:
    line: int
    """1-based line number in the file."""
    item: NewHistoryItem


@dataclass(frozen=True)
class IngestResult:
    stored: int
    skipped: int
    """Items of the file already in the store (an earlier, interrupted run stored them)."""


def read_history_file(path: str | Path, *, truncate: bool = False) -> list[ParsedItem]:
    """Items of a JSONL file (one {"text", "kind"?, "created_at"?, "metadata"?} per line;
    suffix .jsonl or .json) or of plain text (one item per non-blank line), each checked.

    Raises :class:`HistoryFileError` listing every bad line (up to 20) with its number, and
    :class:`DataFormatError` when the file cannot be read or is not UTF-8.
    """
    path = Path(path)
    try:
        data = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise DataFormatError(f"cannot read it ({error.strerror or error})", path=path) from None
    except UnicodeDecodeError as error:
        raise DataFormatError(
            f"not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8", path=path
        ) from None
    return parse_history(
        data, jsonl=path.suffix in JSONL_SUFFIXES, source=str(path), truncate=truncate
    )


def parse_history(
    data: str, *, jsonl: bool, source: str = "<input>", truncate: bool = False
) -> list[ParsedItem]:
    """Items of a file's text (see `read_history_file`), each validated on its own line.

    Lines are split as every JSONL file is (:mod:`curp_chain.data.jsonl`); a JSONL line that
    is not a JSON object is collected with the lines whose items are invalid."""
    parsed: list[ParsedItem] = []
    problems: list[DataFormatError] = []
    lines = data.split("\n")
    rows: Iterator[tuple[int, Any]] = (
        iter_jsonl(lines, source, on_error=problems.append) if jsonl else iter_lines(lines, source)
    )
    for number, value in rows:
        try:
            item = _json_item(value) if jsonl else NewHistoryItem(value)
            (item,) = normalize_items([item], truncate=truncate)
        except InvalidHistoryItemError as error:
            problem = _without_item_prefix(str(error))
            problems.append(DataFormatError(problem, path=source, line=number))
            continue
        parsed.append(ParsedItem(number, item))
    if problems:
        shown = [str(problem) for problem in problems[:MAX_REPORTED_LINES]]
        more = len(problems) - len(shown)
        raise HistoryFileError(
            f"{len(problems)} bad line{'s' if len(problems) > 1 else ''} in {source}; nothing "
            "stored:\n  " + "\n  ".join(shown) + (f"\n  ... and {more} more" if more else ""),
            rule="file",
        )
    return parsed


def _json_item(record: dict[str, Any]) -> NewHistoryItem:
    unknown = set(record) - ITEM_FIELDS
    if unknown:
        raise InvalidHistoryItemError(
            f"unknown fields {sorted(unknown)}; an item has {sorted(ITEM_FIELDS)}"
        )
    if not isinstance(record.get("text"), str):
        raise InvalidHistoryItemError(
            f'"text" must be a string, got {json_type(record.get("text"))}'
        )
    kind = record.get("kind", "text")
    if not isinstance(kind, str):
        raise InvalidHistoryItemError(f'"kind" must be a string, got {json_type(kind)}')
    metadata = record.get("metadata", {})
    if not isinstance(metadata, dict):
        raise InvalidHistoryItemError(
            f'"metadata" must be a JSON object, got {json_type(metadata)}'
        )
    return NewHistoryItem(record["text"], kind, _created_at(record), metadata)


def _created_at(record: dict[str, Any]) -> datetime | None:
    """An ISO 8601 string; null or absent means "not known" (the store records the ingest
    time). Anything else, 0 or "" included, is refused rather than guessed."""
    created = record.get("created_at")
    if created is None:
        return None
    if not isinstance(created, str):
        raise InvalidHistoryItemError(
            f'"created_at" must be an ISO 8601 string, got {json_type(created)} {created!r}'
        )
    try:
        return datetime.fromisoformat(created)
    except ValueError:
        raise InvalidHistoryItemError(
            f'"created_at" {created!r} is not an ISO 8601 date (e.g. "2024-05-01T10:00:00+00:00")'
        ) from None


def _without_item_prefix(message: str) -> str:
    """ "item 0 has kind ..." -> "has kind ..." (the line number replaces the index)."""
    return message.removeprefix("item 0 ").removesuffix("; nothing stored")


def ingest(
    personalizer: Personalizer,
    user_id: str,
    items: Sequence[NewHistoryItem],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> IngestResult:
    """Store the items not yet stored, in batches of ``batch_size``, each all or nothing.

    An item counts as stored when the user already has an item with the same content hash,
    as many times as it is stored: rerunning an interrupted ingest of the same file stores
    exactly the rest, and a file with a repeated line keeps both copies.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise CurpError(f"batch size must be at least 1, got {batch_size}")
    hashes = [content_hash(item) for item in items]
    already = Counter(personalizer.store.count_by_hash(user_id, hashes))
    todo: list[NewHistoryItem] = []
    for item, digest in zip(items, hashes, strict=True):
        if already[digest] > 0:
            already[digest] -= 1
        else:
            todo.append(item)
    with tqdm(total=len(todo), unit="item", desc="ingest", disable=not progress or not todo) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            personalizer.add_history(user_id, batch)
            bar.update(len(batch))
    return IngestResult(stored=len(todo), skipped=len(items) - len(todo))
