"""History items and their validation, shared by the chat model, the CLI and the stores."""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from curp_chain.errors import InvalidHistoryItemError, InvalidUserIdError

MAX_ITEM_CHARS = 20_000
"""Longest history item accepted. Items are posts, messages, reviews: the encoder reads at
most 256 tokens of one, so a longer item is almost always a mistake (a whole file pasted)."""

MAX_USER_ID_CHARS = 255
MAX_KIND_CHARS = 64
MIN_YEAR = 1900
MAX_YEAR = 2200
"""``created_at`` must lie in MIN_YEAR-01-01 .. MAX_YEAR-12-31 (UTC): wider than any real
post, narrow enough that converting between timezones can never overflow."""
MAX_METADATA_DEPTH = 32
"""Nesting levels of dicts and lists in one item's metadata (``{}`` is one level)."""
MAX_METADATA_BYTES = 64 * 1024
"""Size of one item's metadata as UTF-8 JSON."""


@dataclass(frozen=True)
class NewHistoryItem:
    """A history item to store: one post, message or document the user wrote."""

    text: str
    kind: str = "text"
    """Where the item came from ("tweet", "email", "chat", ...)."""
    created_at: datetime | None = None
    """When the user wrote it; the store uses the insertion time when this is None."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Free JSON-serialisable data kept with the item."""


@dataclass(frozen=True)
class HistoryItem:
    """A stored history item."""

    id: int
    user_id: str
    text: str
    kind: str
    created_at: datetime
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class ItemCodes:
    """The product-quantization codes of one stored item (one integer per subspace)."""

    item_id: int
    codes: tuple[int, ...]


@dataclass(frozen=True)
class UserCodes:
    """What a request needs from the store: cached codes, and the items still to encode."""

    encoded: list[ItemCodes]
    """Items whose codes were made by the requested codebook version, newest first."""
    stale: list[HistoryItem]
    """Items with no codes for that version (new codebook): encode them and save the codes."""


@dataclass(frozen=True)
class UserSummary:
    user_id: str
    n_items: int
    last_item_at: datetime | None


def validate_user_id(user_id: object) -> str:
    """The user id under the project's policy, else InvalidUserIdError naming the rule.

    The policy, applied here for every entry point: a non-empty string, normalised to
    Unicode NFC (so composed and decomposed "é" are one user), case kept ("Bob" and "bob"
    are two users), no surrounding whitespace, no control characters or unpaired
    surrogates, at most 255 characters. Compatibility forms are not folded (full-width
    "ｂｏｂ" stays distinct from "bob"): NFKC changes meaning in some scripts.
    """
    if not isinstance(user_id, str):
        raise InvalidUserIdError(f"user_id must be a string, got {type(user_id).__name__}")
    if not user_id.strip():
        raise InvalidUserIdError("user_id must not be empty or whitespace")
    if user_id != user_id.strip():
        raise InvalidUserIdError(
            f"user_id {user_id!r} has whitespace around it; remove it (ids are not stripped "
            "silently, so two spellings never meet as one user by accident)"
        )
    bad = next((c for c in user_id if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise InvalidUserIdError(
            f"user_id {user_id!r} contains {_char_name(bad)}; control characters and "
            "unpaired surrogates are not allowed in ids"
        )
    user_id = unicodedata.normalize("NFC", user_id)
    if len(user_id) > MAX_USER_ID_CHARS:
        raise InvalidUserIdError(
            f"user_id is {len(user_id)} characters long; the limit is {MAX_USER_ID_CHARS}"
        )
    return user_id


def normalize_items(
    items: object, *, truncate: bool = False, max_chars: int = MAX_ITEM_CHARS
) -> list[NewHistoryItem]:
    """Check a whole batch of history items before anything is encoded or stored.

    Cheap (no model, no database): the Python API, the CLI and the stores all call it, so
    a bad batch fails the same way everywhere. Accepts a list (or other sequence) of
    strings or NewHistoryItem; returns NewHistoryItem with ``created_at`` in UTC (a naive
    one is read as UTC). Raises InvalidHistoryItemError naming the first bad item (its
    index) and the rule, so a batch is stored whole or not at all. With ``truncate=True``
    an over-long text is cut to ``max_chars`` instead of rejected.
    """
    batch = _as_batch(items)
    if not batch:
        raise InvalidHistoryItemError("no history items given", rule="batch")
    return [_check_item(index, raw, truncate, max_chars) for index, raw in enumerate(batch)]


def content_hash(item: NewHistoryItem) -> str:
    """SHA-256 (hex) of an item as given: text, kind, created_at (or None) and metadata.

    Stores keep it per item so that a rerun of an interrupted ingest can skip what is
    already stored. It is a stored format: changing it would make old rows look new.
    """
    created = None if item.created_at is None else _utc(item.created_at).isoformat()
    canonical = json.dumps(
        [item.text, item.kind, created, item.metadata],
        ensure_ascii=False,
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _as_batch(items: object) -> list[object]:
    """The batch as a list: a sequence or an iterator of items, never a str, dict or set."""
    if isinstance(items, str | bytes | bytearray | NewHistoryItem):
        raise InvalidHistoryItemError(
            "expected a list of history items, got a single "
            f"{type(items).__name__}; wrap a single item in a list: [item]",
            rule="batch",
        )
    if isinstance(items, Mapping | Set) or not isinstance(items, Sequence | Iterator):
        raise InvalidHistoryItemError(
            f"expected a list of strings or NewHistoryItem, got {type(items).__name__} "
            "(a dict or set has no order, and a dict would store its keys)",
            rule="batch",
        )
    return list(items)


def _check_item(index: int, raw: object, truncate: bool, max_chars: int) -> NewHistoryItem:
    item = NewHistoryItem(raw) if isinstance(raw, str) else raw
    if not isinstance(item, NewHistoryItem):
        raise InvalidHistoryItemError(
            f"item {index} is a {type(raw).__name__}; expected str or NewHistoryItem",
            index=index,
            rule="batch",
        )
    text = _check_text(index, item.text, truncate, max_chars)
    _check_kind(index, item.kind)
    created_at = _check_created_at(index, item.created_at)
    metadata = _check_metadata(index, item.metadata)
    return replace(item, text=text, created_at=created_at, metadata=metadata)


def _fail(index: int, rule: str, message: str) -> InvalidHistoryItemError:
    return InvalidHistoryItemError(
        f"item {index} {message}; nothing stored", index=index, rule=rule
    )


def _check_text(index: int, text: object, truncate: bool, max_chars: int) -> str:
    if not isinstance(text, str):
        raise _fail(index, "text", f"has text of type {type(text).__name__}, not a string")
    if not text.strip():
        raise _fail(index, "text", "is empty or whitespace")
    problem = _text_problem(text)
    if problem:
        raise _fail(index, "text", f"has text that contains {problem}")
    if len(text) > max_chars:
        if not truncate:
            raise _fail(
                index,
                "text",
                f"is {len(text):,} characters long; the limit is {max_chars:,}. Split it "
                "into smaller items, or pass truncate=True to keep its first part",
            )
        text = text[:max_chars]
        if not text.strip():
            raise _fail(index, "text", f"has only whitespace in its first {max_chars:,} characters")
    return text


def _check_kind(index: int, kind: object) -> None:
    if not isinstance(kind, str):
        raise _fail(index, "kind", f"has kind of type {type(kind).__name__}, not a string")
    if not kind.strip():
        raise _fail(index, "kind", "has an empty kind")
    if len(kind) > MAX_KIND_CHARS:
        raise _fail(
            index,
            "kind",
            f"has kind {kind[:20]!r}... of {len(kind)} characters; a kind is at most "
            f"{MAX_KIND_CHARS}",
        )
    problem = _text_problem(kind)
    if problem:
        raise _fail(index, "kind", f"has a kind that contains {problem}")


def _check_created_at(index: int, value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise _fail(
            index,
            "created_at",
            f"has created_at of type {type(value).__name__}; expected a datetime",
        )
    # Checked before converting: astimezone() overflows near years 1 and 9999.
    if not MIN_YEAR <= value.year <= MAX_YEAR or not MIN_YEAR <= _utc(value).year <= MAX_YEAR:
        raise _fail(
            index,
            "created_at",
            f"has created_at {value.isoformat()}, outside {MIN_YEAR}-01-01..{MAX_YEAR}-12-31 UTC",
        )
    return _utc(value)


def _check_metadata(index: int, metadata: object) -> dict[str, Any]:
    if not isinstance(metadata, Mapping):
        raise _fail(
            index, "metadata", f"has metadata of type {type(metadata).__name__}; expected a dict"
        )
    metadata = dict(metadata)
    problem = _json_problem(metadata)
    if problem:
        raise _fail(index, "metadata", f"has metadata that {problem}")
    try:
        size = len(json.dumps(metadata, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError) as exc:  # e.g. an int too long to print
        raise _fail(
            index, "metadata", f"has metadata that is not JSON-serialisable ({exc})"
        ) from None
    if size > MAX_METADATA_BYTES:
        raise _fail(
            index,
            "metadata",
            f"has metadata of {size:,} bytes as JSON; the limit is {MAX_METADATA_BYTES:,}",
        )
    return metadata


def _json_problem(root: dict[Any, Any]) -> str | None:
    """What makes a value not plain JSON (walked without recursion, so depth is safe)."""
    stack: list[tuple[object, int]] = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list | tuple):
            if depth > MAX_METADATA_DEPTH:
                return f"is nested deeper than {MAX_METADATA_DEPTH} levels"
            if isinstance(value, dict):
                for key, child in value.items():
                    if not isinstance(key, str):
                        return f"has the key {key!r}; JSON object keys must be strings"
                    stack.append((key, depth))
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in value)
        elif isinstance(value, str):
            problem = _text_problem(value)
            if problem:
                return f"has a string that contains {problem}"
        elif isinstance(value, float) and not math.isfinite(value):
            return f"holds {value}, which JSON cannot represent"
        elif value is not None and not isinstance(value, bool | int | float):
            return f"holds a {type(value).__name__}, which is not a JSON value"
    return None


def _text_problem(text: str) -> str | None:
    """Why a string is not storable text (a NUL or an unpaired surrogate), or None."""
    if "\x00" in text:
        return "a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "an unpaired surrogate, which is not valid Unicode"
    return None


def _char_name(char: str) -> str:
    return f"U+{ord(char):04X}"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
