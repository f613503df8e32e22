"""How a LangGraph store item lives in a user's CURP history, and the store's matching rules.

One item is one history item of kind ``memory`` (configurable). Its text, which the encoder
reads, comes from the value; the namespace, key, whole value and first-put time ride in the
item's metadata under ``"langgraph_store"``. The history item's own ``created_at`` is the time
of the latest put, so an updated memory counts as the user's newest history.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from langgraph.store.base import Item, MatchCondition, SearchItem
from langgraph.store.base.embed import get_text_at_path

from curp_chain.errors import InvalidStoreOperationError
from curp_chain.interfaces.history import HistoryItem, NewHistoryItem

METADATA_KEY = "langgraph_store"

Namespace = tuple[str, ...]


@dataclass(frozen=True)
class Memory:
    """A store item read back from the history."""

    item_id: int
    namespace: Namespace
    key: str
    value: dict[str, Any]
    text: str
    created_at: datetime
    updated_at: datetime

    def as_item(self) -> Item:
        return Item(
            value=self.value,
            key=self.key,
            namespace=self.namespace,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    def as_search_item(self, score: float | None = None) -> SearchItem:
        return SearchItem(
            self.namespace, self.key, self.value, self.created_at, self.updated_at, score
        )


def memory_of(item: HistoryItem) -> Memory | None:
    """The store item a history item holds, or None for the user's other history."""
    entry = item.metadata.get(METADATA_KEY)
    if not isinstance(entry, Mapping):
        return None
    namespace, key, value = entry.get("namespace"), entry.get("key"), entry.get("value")
    if not isinstance(namespace, list) or not isinstance(key, str) or not isinstance(value, dict):
        return None
    created = entry.get("created_at")
    return Memory(
        item_id=item.id,
        namespace=tuple(str(label) for label in namespace),
        key=key,
        value=value,
        text=item.text,
        created_at=datetime.fromisoformat(created) if isinstance(created, str) else item.created_at,
        updated_at=item.created_at,
    )


def latest(items: Sequence[HistoryItem]) -> dict[tuple[Namespace, str], list[Memory]]:
    """The store items among a user's history (newest first), by (namespace, key).

    More than one per key happens only when two puts of one key race; the first is current,
    and the next put or delete of the key removes them all.
    """
    found: dict[tuple[Namespace, str], list[Memory]] = {}
    for item in items:
        memory = memory_of(item)
        if memory is not None:
            found.setdefault((memory.namespace, memory.key), []).append(memory)
    return found


def new_item(
    namespace: Namespace,
    key: str,
    value: Mapping[str, Any],
    *,
    kind: str,
    fields: Sequence[str],
    now: datetime,
    created_at: datetime | None,
) -> NewHistoryItem:
    """The history item that stores ``value`` under (namespace, key)."""
    check_value(namespace, key, value)
    entry = {
        "namespace": list(namespace),
        "key": key,
        "value": dict(value),
        "created_at": (created_at or now).isoformat(),
    }
    return NewHistoryItem(
        value_text(value, fields), kind=kind, created_at=now, metadata={METADATA_KEY: entry}
    )


def value_text(value: Mapping[str, Any], fields: Sequence[str]) -> str:
    """The text the encoder reads: the strings at ``fields`` (LangGraph's path syntax, e.g.
    "text", "notes[*].body"), joined by newlines; else the value as compact JSON."""
    texts = [text for field in fields for text in get_text_at_path(value, field)]
    joined = "\n".join(text for text in texts if isinstance(text, str) and text.strip())
    if joined.strip():
        return joined
    return json.dumps(dict(value), ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def check_value(namespace: Namespace, key: str, value: object) -> None:
    """A dict of plain JSON, else InvalidStoreOperationError naming the item."""
    if not isinstance(value, Mapping):
        raise InvalidStoreOperationError(
            f"the value of {key!r} in {namespace} is a {type(value).__name__}; store a dict"
        )
    try:
        json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidStoreOperationError(
            f"the value of {key!r} in {namespace} is not plain JSON ({exc}); the history "
            "keeps JSON values only"
        ) from None


def matches_filter(value: Mapping[str, Any], filter: Mapping[str, Any] | None) -> bool:
    """LangGraph's filter rules: equality per field (nested dicts and lists compared
    field by field), or an operator dict with $eq, $ne, $gt, $gte, $lt, $lte."""
    return not filter or all(_compare(value.get(k), wanted) for k, wanted in filter.items())


def _compare(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, dict):
        if any(isinstance(k, str) and k.startswith("$") for k in wanted):
            return all(_operator(actual, op, operand) for op, operand in wanted.items())
        return isinstance(actual, dict) and all(
            _compare(actual.get(k), v) for k, v in wanted.items()
        )
    if isinstance(wanted, list | tuple):
        return (
            isinstance(actual, list | tuple)
            and len(actual) == len(wanted)
            and all(_compare(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted)


_ORDER = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _operator(actual: Any, op: str, operand: Any) -> bool:
    if op == "$eq":
        return bool(actual == operand)
    if op == "$ne":
        return bool(actual != operand)
    if op not in _ORDER:
        raise InvalidStoreOperationError(
            f"unknown filter operator {op!r}; use $eq, $ne, $gt, $gte, $lt or $lte"
        )
    try:
        return bool(_ORDER[op](float(actual), float(operand)))
    except (TypeError, ValueError):
        return False  # a missing or non-numeric field is simply not in range


def matches_namespace(namespace: Namespace, condition: MatchCondition) -> bool:
    """A ListNamespacesOp condition: prefix or suffix, "*" matching any one label."""
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        labels = namespace[: len(path)]
    elif condition.match_type == "suffix":
        labels = namespace[len(namespace) - len(path) :]
    else:
        raise InvalidStoreOperationError(
            f"unknown match type {condition.match_type!r}; use 'prefix' or 'suffix'"
        )
    return all(want == "*" or got == want for got, want in zip(labels, path, strict=True))
