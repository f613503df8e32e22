"""Checks the store adds to `curp_chain.interfaces.history`'s, run before any database work.

The core checks what every store needs; these cover what a SQL column needs on top
(lengths, JSON, text PostgreSQL accepts), so a bad batch fails with a project error that
names the item instead of a driver error halfway through the insert.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral
from typing import TypeVar, cast

from curp_chain.errors import InvalidHistoryItemError, InvalidUserIdError
from curp_chain.interfaces.history import NewHistoryItem, normalize_items, validate_user_id
from curp_chain_stores.models import MAX_CODE, MAX_CODEBOOK_VERSION_CHARS, MAX_KIND_CHARS

Key = TypeVar("Key")


def check_user_id(user_id: object) -> str:
    """The core's user id policy (`curp_chain.interfaces.history.validate_user_id`), then
    the column's."""
    user_id = validate_user_id(user_id)
    if "\x00" in user_id or not _is_utf8(user_id):  # the policy refuses these; last line
        raise InvalidUserIdError(
            "user_id contains a NUL character or an unpaired surrogate; use valid text"
        )
    return user_id


def check_items(items: object) -> list[NewHistoryItem]:
    """The core's batch check (`normalize_items`), then the limits of the item columns.

    The core already refuses everything checked here; this is the last line, for a caller
    that reaches the store with a core whose limits differ from the columns'.
    """
    batch = normalize_items(items)
    for index, item in enumerate(batch):
        if not _is_utf8(item.text) or "\x00" in item.text:
            raise InvalidHistoryItemError(
                f"item {index}: text is not storable; nothing stored", index=index, rule="text"
            )
        if len(item.kind) > MAX_KIND_CHARS or "\x00" in item.kind:
            raise InvalidHistoryItemError(
                f"item {index} has kind {item.kind!r}; a kind is a string of at most "
                f"{MAX_KIND_CHARS} characters without NUL. Nothing stored.",
                index=index,
                rule="kind",
            )
    return batch


def check_codebook_version(version: object) -> str:
    if not isinstance(version, str) or not version.strip():
        raise InvalidHistoryItemError(
            f"codebook_version must be a non-empty string, got {version!r}"
        )
    if len(version) > MAX_CODEBOOK_VERSION_CHARS:
        raise InvalidHistoryItemError(
            f"codebook_version is {len(version)} characters long; the limit is "
            f"{MAX_CODEBOOK_VERSION_CHARS}"
        )
    return version


def check_codes(rows: Iterable[tuple[Key, object]]) -> dict[Key, tuple[int, ...]]:
    """Codes per key (item index or id): ints in 0..65535, the same number for every item."""
    checked: dict[Key, tuple[int, ...]] = {}
    width: int | None = None
    for key, row in rows:
        if isinstance(row, str | bytes | Mapping):
            raise InvalidHistoryItemError(f"codes of item {key} must be a sequence of ints")
        try:
            raw = tuple(cast(Iterable[object], row))
        except TypeError:
            raise InvalidHistoryItemError(
                f"codes of item {key} must be a sequence of ints, got {type(row).__name__}"
            ) from None
        values: list[int] = []
        for code in raw:
            if not isinstance(code, Integral) or isinstance(code, bool):
                raise InvalidHistoryItemError(
                    f"codes of item {key} contain {code!r}; every code must be an int"
                )
            if not 0 <= int(code) <= MAX_CODE:
                raise InvalidHistoryItemError(
                    f"codes of item {key} contain {code}; codes must lie in 0..{MAX_CODE}"
                )
            values.append(int(code))
        if not values:
            raise InvalidHistoryItemError(f"codes of item {key} are empty")
        if width is not None and len(values) != width:
            raise InvalidHistoryItemError(
                f"codes of item {key} have {len(values)} entries but earlier items have "
                f"{width}; all codes of one codebook have one entry per subspace"
            )
        width = len(values)
        checked[key] = tuple(values)
    return checked


def check_batch_codes(
    n_items: int, codes: Sequence[Sequence[int]] | None, codebook_version: str | None
) -> tuple[list[tuple[int, ...]] | None, str | None]:
    """Codes for an `add_items` batch: both or neither of codes and version, one per item."""
    if codes is None and codebook_version is None:
        return None, None
    if codes is None or codebook_version is None:
        missing = "codebook_version" if codes is not None else "codes"
        raise InvalidHistoryItemError(
            f"codes and codebook_version go together; {missing} is missing. Nothing stored."
        )
    version = check_codebook_version(codebook_version)
    rows = list(codes)
    if len(rows) != n_items:
        raise InvalidHistoryItemError(
            f"got codes for {len(rows)} items but {n_items} items; give one codes row per "
            "item. Nothing stored."
        )
    checked = check_codes(enumerate(rows))
    return [checked[index] for index in range(n_items)], version


def check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")
    return limit


def check_item_ids(item_ids: object) -> list[int]:
    """Item ids to delete: a sequence of ints, deduplicated and sorted (the lock order)."""
    if isinstance(item_ids, str | bytes) or not isinstance(item_ids, Iterable):
        raise InvalidHistoryItemError(f"item ids must be a list of ints, got {item_ids!r}")
    ids = list(item_ids)
    for item_id in ids:
        if not isinstance(item_id, int) or isinstance(item_id, bool):
            raise InvalidHistoryItemError(f"item ids must be ints, got {item_id!r}")
    return sorted(set(ids))


def check_kind(kind: object) -> str | None:
    """A kind to filter by, or None for every kind."""
    if kind is None:
        return None
    if not isinstance(kind, str) or not kind.strip() or len(kind) > MAX_KIND_CHARS:
        raise InvalidHistoryItemError(
            f"kind must be None or a non-empty string of at most {MAX_KIND_CHARS} "
            f"characters, got {kind!r}"
        )
    return kind


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
