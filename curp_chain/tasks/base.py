"""What every task shares: how its request is built, and its evaluation examples.

A task turns its own data layout into the generic format (:mod:`curp_chain.data.generic`):
examples (request as chat turns, the user's reply as target) and histories. Training reads
that format; evaluation reads it too, through :meth:`Task.eval_examples`, so a soft prompt
is always evaluated on exactly the request it was trained with.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from curp_chain.data.generic import ExampleRecord, Histories, ItemRecord, Message
from curp_chain.data.jsonl import DataFormatError
from curp_chain.runtime.prompt import ChatTurn

MAX_SOURCE_CHARS = 600
"""Longest text a request quotes (a Reddit parent, an email body): longer ones are cut at
a word boundary, so that sequence lengths, and so training cost, stay bounded."""


class TaskDataError(DataFormatError):
    """A task's data folder is missing a file or holds data in another layout. Its JSONL
    files are read by :func:`curp_chain.data.jsonl.read_jsonl`, whose errors (a missing file,
    a line that is not a JSON object) are the parent :class:`DataFormatError`."""


def cut(text: str, limit: int = MAX_SOURCE_CHARS) -> str:
    """``text`` with spaces collapsed at its ends, cut to at most ``limit`` characters at a
    word boundary (with "..." when it was cut)."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head = text[: limit - 3]
    space = head.rfind(" ")
    return (head[:space] if space > limit // 2 else head).rstrip() + "..."


@dataclass(frozen=True)
class ProfileItem:
    id: str
    text: str


@dataclass(frozen=True)
class TaskExample:
    """One evaluation example: the request, the user's earlier items and the gold reply."""

    id: str
    user_id: str
    messages: tuple[ChatTurn, ...]
    """The request as the model gets it, system message included; the last turn is the
    user's."""
    gold: str
    profile: tuple[ProfileItem, ...]
    """The user's history without the target, in the order methods take items from."""
    source: str
    """The text the request is about (the tweet to paraphrase, the post replied to, the
    email body, the partner's message): rag's query, and copy's reply where copying applies."""

    @property
    def input(self) -> str:
        """The user turn of the request."""
        return self.messages[-1].content

    @property
    def profile_texts(self) -> list[str]:
        return [item.text for item in self.profile]

    def fingerprint(self) -> str:
        """Changes whenever anything a method or a metric reads changes. The system message
        is left out: it reaches only the prompt, whose own fingerprint covers it."""
        payload = json.dumps(
            [
                self.id,
                [[t.role, t.content] for t in self.messages if t.role != "system"],
                self.gold,
                [[p.id, p.text] for p in self.profile],
            ],
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


class Task(ABC):
    """One kind of request: its system message, instruction, loaders and text prompts."""

    name: ClassVar[str]
    description: ClassVar[str]
    system: ClassVar[str]
    """The system message of every request of this task."""
    instruction: ClassVar[str]
    """What the user turn starts with; the source text follows it."""
    history_header: ClassVar[str]
    """Text-history prompts (rag, profile): this line, the items as a list, the footer,
    then the request."""
    history_footer: ClassVar[str]
    copy_applies: ClassVar[bool] = False
    """Whether returning the source unchanged is a meaningful floor (paraphrasing)."""
    splits: ClassVar[tuple[str, ...]] = ("train", "dev")
    eval_per_user: ClassVar[int] = 1
    """Examples per user that `curp eval` takes by default."""
    reply_label: ClassVar[str | None] = None
    """A label replies may open with (a regular expression, "subject" for "Subject:"), taken
    off before a reply is scored, as the preambles are."""
    whole_reply: ClassVar[bool] = False
    """Score every line of a reply (a comment of several paragraphs), not the first one."""

    def request(self, text: str, context: Sequence[ChatTurn] = ()) -> tuple[ChatTurn, ...]:
        """The request about ``text`` (cut to :data:`MAX_SOURCE_CHARS`), after the earlier
        turns ``context`` of a conversation."""
        turns = [ChatTurn("system", self.system), *context]
        return (*turns, ChatTurn("user", self.instruction + cut(text)))

    def source_of(self, record: ExampleRecord) -> str:
        """The source text of a request this task built."""
        content = record.messages[-1].content
        return content[len(self.instruction) :] if content.startswith(self.instruction) else content

    def folder(self, data_dir: str | Path) -> Path:
        path = Path(data_dir)
        if path.name != self.name and (path / self.name).is_dir():
            path = path / self.name
        if not path.is_dir():
            raise TaskDataError(f"{path} is not a folder with {self.name} data")
        return path

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise TaskDataError(
                f"{self.name} has the splits {', '.join(self.splits)}, not {split!r}"
            )

    @abstractmethod
    def records(self, data_dir: str | Path, split: str) -> tuple[list[ExampleRecord], Histories]:
        """The split in the generic format: examples and histories (user ids prefixed with
        the task name, so tasks can be mixed)."""

    def eval_examples(
        self, data_dir: str | Path, split: str = "dev", per_user: int | None = None
    ) -> list[TaskExample]:
        """Each user's last ``per_user`` examples, taken round-robin over users (the first N
        examples cover as many users as they can); the history leaves the target out and
        lists the newest items first."""
        examples, histories = self.records(data_dir, split)
        return examples_from_records(self, examples, histories, per_user or self.eval_per_user)


def examples_from_records(
    task: Task,
    examples: Sequence[ExampleRecord],
    histories: Mapping[str, Sequence[ItemRecord]],
    per_user: int,
) -> list[TaskExample]:
    by_user: dict[str, list[ExampleRecord]] = {}
    for record in examples:
        by_user.setdefault(record.user_id, []).append(record)
    chosen = {user: records[-per_user:] for user, records in by_user.items()}
    ordered = []
    for round_index in range(per_user):
        for records in chosen.values():
            if round_index < len(records):
                ordered.append(records[round_index])
    result = []
    for record in ordered:
        items = [
            ProfileItem(item.id or str(index), item.text)
            for index, item in enumerate(histories.get(record.user_id, ()))
            if not (record.item_id is not None and item.id == record.item_id)
            and item.text.strip() != record.response.strip()
        ]
        result.append(
            TaskExample(
                id=f"{record.user_id}#{record.item_id or _digest(record)}",
                user_id=record.user_id,
                messages=record.turns(),
                gold=record.response,
                profile=tuple(reversed(items)),
                source=task.source_of(record),
            )
        )
    return result


def _digest(record: ExampleRecord) -> str:
    return hashlib.sha256(record.model_dump_json().encode("utf-8")).hexdigest()[:10]


def example_record(
    task: Task,
    user_id: str,
    text: str,
    response: str,
    *,
    item_id: str | None = None,
    context: Sequence[ChatTurn] = (),
) -> ExampleRecord:
    """An example of ``task`` in the generic format."""
    turns = task.request(text, context)
    return ExampleRecord(
        user_id=user_id,
        messages=tuple(Message(role=t.role, content=t.content) for t in turns),
        response=response,
        item_id=item_id,
    )


def field(row: dict[str, Any], name: str, kind: type, where: str) -> Any:
    """``row[name]``, checked to be a ``kind``; a TaskDataError naming ``where`` otherwise."""
    value = row.get(name)
    if not isinstance(value, kind):
        raise TaskDataError(f"{where}: {name!r} must be a {kind.__name__}")
    return value
