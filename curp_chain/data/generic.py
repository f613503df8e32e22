"""The generic data format of training and evaluation: examples and histories as JSONL.

An **examples** file holds one request and its target per line::

    {"user_id": "maya", "messages": [{"role": "user", "content": "Plans tonight?"}],
     "response": "pasta then climbing lol", "item_id": "m-17"}

``messages`` is the request as chat turns (system, user and assistant turns, ending with a
user turn); ``response`` is what this user wrote (the target); ``item_id`` (optional) names
the history item that *is* the target, left out of the history when this example is used.

A **histories** file holds one user per line, items oldest first::

    {"user_id": "maya", "items": ["first note", {"text": "pasta tonight", "id": "m-17",
     "kind": "note", "created_at": "2026-11-02T18:00:00", "metadata": {}}]}

An item is a string or an object with ``text`` and the optional ``id``, ``kind``,
``created_at`` and ``metadata``. Instead of a file, histories can come from a history store
URL (the store ``curp ingest`` writes): see :func:`read_histories`.

Both are read by :func:`curp_chain.data.jsonl.read_jsonl`: a line that does not fit raises
:class:`~curp_chain.data.jsonl.DataFormatError` naming ``file:line`` and the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from curp_chain.data.jsonl import DataFormatError, read_jsonl
from curp_chain.runtime.defaults import open_store
from curp_chain.runtime.prompt import ChatTurn

STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")
"""URL schemes read as a history store rather than a file."""


class Message(BaseModel):
    """One chat turn of a request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class ExampleRecord(BaseModel):
    """One request and the reply this user wrote to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str = Field(min_length=1)
    messages: tuple[Message, ...] = Field(min_length=1)
    """The request as chat turns; the last one is the user's."""
    response: str = Field(min_length=1)
    """The target: what this user wrote."""
    item_id: str | None = None
    """The history item that is the target, left out of the history for this example."""

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: tuple[Message, ...]) -> tuple[Message, ...]:
        if messages[-1].role != "user":
            raise ValueError("the last message must be the user's (role 'user')")
        return messages

    def turns(self) -> tuple[ChatTurn, ...]:
        return tuple(ChatTurn(m.role, m.content) for m in self.messages)


class ItemRecord(BaseModel):
    """One history item in its object form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(min_length=1)
    id: str | None = None
    kind: str | None = None
    created_at: datetime | None = None
    metadata: dict[str, Any] | None = None


class HistoryRecord(BaseModel):
    """One user's history, oldest item first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str = Field(min_length=1)
    items: tuple[str | ItemRecord, ...]

    def item_records(self) -> list[ItemRecord]:
        return [ItemRecord(text=i) if isinstance(i, str) else i for i in self.items]


Histories = dict[str, list[ItemRecord]]
"""user id -> items, oldest first."""


def read_examples(path: str | Path) -> list[ExampleRecord]:
    """The examples of a JSONL file, in file order."""
    return [record for _, record in read_jsonl(path, ExampleRecord)]


def is_store_url(value: str | Path) -> bool:
    text = str(value)
    return "://" in text and text.split(":", 1)[0].split("+", 1)[0] in STORE_SCHEMES


def read_histories(source: str | Path) -> Histories:
    """Histories from a JSONL file, or from a history store when ``source`` is its URL
    (``sqlite:///...``, ``postgresql+psycopg://...``). A user listed twice in a file is an
    error: the two lines would silently compete."""
    if is_store_url(source):
        return histories_from_store(str(source))
    path = Path(source)
    histories: Histories = {}
    for number, record in read_jsonl(path, HistoryRecord):
        if record.user_id in histories:
            raise DataFormatError(
                f"user {record.user_id!r} already has a line", path=path, line=number
            )
        histories[record.user_id] = record.item_records()
    return histories


def histories_from_store(url: str) -> Histories:
    """Every user's items from a history store, oldest first (the store lists newest
    first). Item ids are the store's item ids as strings."""
    store = open_store(url)
    try:
        histories: Histories = {}
        for user in store.list_users():
            items = reversed(store.get_items(user.user_id))
            histories[user.user_id] = [
                ItemRecord(
                    text=i.text,
                    id=str(i.id),
                    kind=i.kind,
                    created_at=i.created_at,
                    metadata=dict(i.metadata),
                )
                for i in items
            ]
        return histories
    finally:
        store.close()


def _write_lines(path: str | Path, records: Iterable[BaseModel]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.model_dump_json(exclude_none=True) + "\n")
    return out


def write_examples(path: str | Path, examples: Iterable[ExampleRecord]) -> Path:
    return _write_lines(path, examples)


def write_histories(path: str | Path, histories: Mapping[str, Sequence[ItemRecord]]) -> Path:
    return _write_lines(
        path, (HistoryRecord(user_id=u, items=tuple(items)) for u, items in histories.items())
    )


def history_for(
    example: ExampleRecord, histories: Mapping[str, Sequence[ItemRecord]], limit: int
) -> tuple[str, ...]:
    """The texts that stand for the user in ``example``: their newest ``limit`` items,
    leaving out the example's ``item_id`` and any item whose text is the response (a target
    seen in the history would be copied, not predicted)."""
    items = histories.get(example.user_id, ())
    kept = [
        i.text
        for i in items
        if not (example.item_id is not None and i.id == example.item_id)
        and i.text.strip() != example.response.strip()
    ]
    return tuple(kept[-limit:]) if limit > 0 else ()


def check_users(
    examples: Sequence[ExampleRecord], histories: Mapping[str, Sequence[ItemRecord]], where: str
) -> None:
    """Every example's user must have a history: name the first few that do not."""
    missing = sorted({e.user_id for e in examples} - set(histories))
    if missing:
        raise DataFormatError(
            f"{where}: {len(missing)} users of the examples have no history, e.g. {missing[:3]}"
        )
