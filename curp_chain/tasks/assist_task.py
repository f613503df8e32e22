"""Everyday requests answered for a person, as a task: the teacher's kept answers are the
targets, the user's items the history.

Unlike the write-as-the-user tasks, the target is not something the user wrote: it is the
answer a teacher model gave to the user's everyday request while reading their items as text
(:mod:`curp_chain.training.teacher`). A student trained on these examples learns to give such
answers from the user's codes alone.

- ``train``: the kept answers for training users and training requests;
- ``dev``: the kept answers for held-out users and held-out requests (the evaluation pairs).

The answers are read from every ``*.jsonl`` file in the answers folder
(``$CURP_ASSIST_ANSWERS``, else ``training-data/assist`` in the working directory, where the
repository keeps them); a pair answered in two files counts once. The user histories are read
from the shared data folder, as for the other tasks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curp_chain.data.generic import ExampleRecord, Histories, ItemRecord, Message
from curp_chain.data.jsonl import read_jsonl
from curp_chain.tasks.assist import (
    AssistFilters,
    AssistUser,
    candidates,
    is_kept,
    load_requests,
    load_users,
)
from curp_chain.tasks.base import Task, TaskDataError

ANSWERS_ENV = "CURP_ASSIST_ANSWERS"
DEFAULT_ANSWERS_DIR = Path("training-data") / "assist"

ASSIST_SYSTEM = (
    "You are a helpful assistant who knows the user. Answer their request directly in 1-3 "
    'sentences, suited to their interests and life, and speak to them as "you".'
)
"""The system message an everyday request is trained and served under."""


def answers_dir() -> Path:
    """The folder of teacher answers: ``$CURP_ASSIST_ANSWERS``, else
    ``training-data/assist`` in the working directory."""
    return Path(os.environ.get(ANSWERS_ENV) or DEFAULT_ANSWERS_DIR)


def read_answers(folder: str | Path) -> Iterator[dict[str, Any]]:
    """Every teacher record in the folder's ``*.jsonl`` files (a file a killed run left with a
    partial last line is read up to it), each (teacher, user, request) once."""
    path = Path(folder)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise TaskDataError(
            f"no teacher answers in {path}: run `python -m curp_chain.training.teacher` or "
            f"set ${ANSWERS_ENV} to the folder of its answers"
        )
    seen: set[tuple[str, str, str]] = set()
    for file in files:
        for _, record in read_jsonl(file, skip_unreadable=True):
            pair = (record.get("teacher"), record.get("user_id"), record.get("request_id"))
            if pair not in seen:
                seen.add(pair)  # type: ignore[arg-type]
                yield record


def kept_answers(
    folder: str | Path, split: str, filters: AssistFilters | None = None
) -> list[dict[str, Any]]:
    """The records of ``split`` ("train" or "eval") that ``filters`` keep, in file order."""
    return [r for r in read_answers(folder) if r.get("split") == split and is_kept(r, filters)]


def history_records(user: AssistUser) -> list[ItemRecord]:
    """The user's items a student sees: the candidates the teacher chose from, oldest first."""
    return [ItemRecord(text=item.text, id=item.id) for item in candidates(user)]


class AssistTask(Task):
    name = "assist"
    description = "Everyday requests answered for the user, shaped by their history"
    system = ASSIST_SYSTEM
    instruction = ""
    history_header = "Here are some things the user wrote recently:"
    history_footer = (
        "Answer the user's request directly in 1-3 sentences. Make the answer fit their "
        'interests and life, speak to them as "you", and do not quote or repeat what they '
        "wrote."
    )
    eval_per_user = 5

    def __init__(self, answers: str | Path | None = None, filters: AssistFilters | None = None):
        self.answers = Path(answers) if answers else answers_dir()
        self.filters = filters or AssistFilters()

    def records(self, data_dir: str | Path, split: str) -> tuple[list[ExampleRecord], Histories]:
        self.check_split(split)
        users = {
            u.user_id: u for u in load_users(data_dir, "train" if split == "train" else "held_out")
        }
        requests = {r.id: r for r in load_requests("all")}
        examples: list[ExampleRecord] = []
        histories: Histories = {}
        for record in kept_answers(self.answers, "train" if split == "train" else "eval"):
            user, request = users.get(record["user_id"]), requests.get(record["request_id"])
            if user is None or request is None:
                continue  # a user or request no longer in the data: its answer is stale
            messages = (Message(role="system", content=self.system),)
            examples.append(
                ExampleRecord(
                    user_id=user.user_id,
                    messages=(*messages, Message(role="user", content=request.text)),
                    response=record["answer"],
                )
            )
            if user.user_id not in histories:
                histories[user.user_id] = history_records(user)
        return examples, histories
