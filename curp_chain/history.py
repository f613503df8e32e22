"""History items and their validation, shared by the chat model, the CLI and the stores."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from curp_chain.errors import InvalidHistoryItemError, InvalidUserIdError

MAX_ITEM_CHARS = 20_000
"""Longest history item accepted. Items are posts, messages, reviews: the encoder reads at
most 256 tokens of one, so a longer item is almost always a mistake (a whole file pasted)."""

MAX_USER_ID_CHARS = 255


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
    """Return the user id if usable, else raise InvalidUserIdError naming the problem."""
    if not isinstance(user_id, str):
        raise InvalidUserIdError(f"user_id must be a string, got {type(user_id).__name__}")
    if not user_id.strip():
        raise InvalidUserIdError("user_id must not be empty or whitespace")
    if len(user_id) > MAX_USER_ID_CHARS:
        raise InvalidUserIdError(
            f"user_id is {len(user_id)} characters long; the limit is {MAX_USER_ID_CHARS}"
        )
    return user_id


def normalize_items(
    items: object, *, truncate: bool = False, max_chars: int = MAX_ITEM_CHARS
) -> list[NewHistoryItem]:
    """Check a batch of history items before anything is stored.

    Accepts strings or NewHistoryItem. Raises InvalidHistoryItemError naming the first bad
    item (its index) so that a batch is stored whole or not at all. With ``truncate=True``
    an over-long item is cut to ``max_chars`` instead of rejected.
    """
    if isinstance(items, str | NewHistoryItem):
        raise InvalidHistoryItemError(
            "expected a list of history items; wrap a single item in a list: [item]"
        )
    try:
        batch = list(items)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidHistoryItemError(
            f"expected a list of strings or NewHistoryItem, got {type(items).__name__}"
        ) from None
    if not batch:
        raise InvalidHistoryItemError("no history items given")
    result: list[NewHistoryItem] = []
    for index, raw in enumerate(batch):
        item = NewHistoryItem(raw) if isinstance(raw, str) else raw
        if not isinstance(item, NewHistoryItem):
            raise InvalidHistoryItemError(
                f"item {index} is a {type(raw).__name__}; expected str or NewHistoryItem"
            )
        if not isinstance(item.text, str) or not item.text.strip():
            raise InvalidHistoryItemError(f"item {index} is empty or whitespace; nothing stored")
        if "\x00" in item.text:
            raise InvalidHistoryItemError(f"item {index} contains a NUL character; nothing stored")
        if len(item.text) > max_chars:
            if not truncate:
                raise InvalidHistoryItemError(
                    f"item {index} is {len(item.text):,} characters long; the limit is "
                    f"{max_chars:,}. Split it into smaller items, or pass truncate=True to keep "
                    "its first part. Nothing was stored."
                )
            item = NewHistoryItem(
                item.text[:max_chars], item.kind, item.created_at, dict(item.metadata)
            )
        if not item.kind or not item.kind.strip():
            raise InvalidHistoryItemError(f"item {index} has an empty kind")
        result.append(item)
    return result
