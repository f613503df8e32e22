"""Persona-Chat: reply as this speaker would, given their persona facts as their history.

Layout (``personachat/dev.jsonl``, a validation split only): one dialogue per line,
``{"dialogue_id", "persona": [facts], "turns": [{"query", "reply"}]}``. Dialogues that share
a persona fact belong to one persona, the user here (its history: the facts of all its
dialogues, in first-seen order). Each turn is an example: the partner's message as the user
turn, after up to :data:`CONTEXT_TURNS` earlier exchanges as chat turns; the target is the
speaker's reply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curp_chain.data.generic import ExampleRecord, Histories, ItemRecord
from curp_chain.data.jsonl import read_jsonl
from curp_chain.runtime.prompt import ChatTurn
from curp_chain.tasks.base import Task, TaskDataError, cut, example_record, field

CONTEXT_TURNS = 2
"""Earlier exchanges of the dialogue given as context: enough to follow the conversation,
few enough to keep sequences short."""


def _personas(dialogues: list[dict[str, Any]]) -> list[int]:
    """The persona index of each dialogue: dialogues sharing a fact are joined (union-find)."""
    parent = list(range(len(dialogues)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for index, dialogue in enumerate(dialogues):
        for fact in dialogue["persona"]:
            key = " ".join(fact.lower().split())
            if key in owner:
                parent[root(index)] = root(owner[key])
            else:
                owner[key] = index
    return [root(i) for i in range(len(dialogues))]


class PersonaChatTask(Task):
    name = "personachat"
    description = "Persona-Chat: the speaker's reply, with the persona facts as history"
    system = "You are chatting with someone you just met. Reply with one short message."
    instruction = ""
    history_header = "Facts about the person replying:"
    history_footer = "Reply as this person would."
    splits = ("dev",)

    def records(self, data_dir: str | Path, split: str) -> tuple[list[ExampleRecord], Histories]:
        self.check_split(split)
        path = self.folder(data_dir) / f"{split}.jsonl"
        dialogues = []
        for number, row in read_jsonl(path):
            where = f"{path}:{number}"
            persona = field(row, "persona", list, where)
            turns = field(row, "turns", list, where)
            if not all(isinstance(f, str) for f in persona) or not all(
                isinstance(t, dict) and isinstance(t.get("query"), str)
                and isinstance(t.get("reply"), str)
                for t in turns
            ):  # fmt: skip
                raise TaskDataError(f"{where}: persona must be strings, turns query/reply pairs")
            dialogues.append({"id": str(row.get("dialogue_id", number)), **row})
        owners = _personas(dialogues)
        histories: Histories = {}
        examples: list[ExampleRecord] = []
        for dialogue, owner in zip(dialogues, owners, strict=True):
            user = f"personachat:{dialogues[owner]['id']}"
            facts = histories.setdefault(user, [])
            known = {f.text for f in facts}
            facts += [
                ItemRecord(text=f, kind="persona") for f in dialogue["persona"] if f not in known
            ]
            context: list[ChatTurn] = []
            for turn in dialogue["turns"]:
                examples.append(
                    example_record(
                        self,
                        user,
                        turn["query"],
                        turn["reply"],
                        context=context[-2 * CONTEXT_TURNS :],
                    )
                )
                context += [
                    ChatTurn("user", cut(turn["query"])),
                    ChatTurn("assistant", cut(turn["reply"])),
                ]
        return examples, histories
