"""LaMP-7, personalized tweet paraphrasing: its data, its request, and its training data.

LaMP data comes in the official layout: ``questions.json`` and ``outputs.json`` in one folder.
``questions.json`` is ``[{"id", "input", "profile": [{"id", "text", ...}, ...]}]`` and
``outputs.json`` is ``{"task", "golds": [{"id", "output"}]}``. Examples keep the file order,
so ``--limit N`` always means the same first N users.

LaMP-7 has no training split of its own: training examples come from PAN 2019 users, a
neutral paraphrase of one of their tweets (an LLM's, from the `curp train sources` cache) as
the request and the tweet as the target. :meth:`Lamp7Task.records` writes them in the
generic format for the ``train`` split; the ``dev`` split is the LaMP-7 folder itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curp_chain.data.generic import ExampleRecord, Histories, ItemRecord
from curp_chain.data.sources import SourceCache
from curp_chain.data.users import (
    UserTexts,
    clean_profile,
    default_cache_dir,
    default_data_dir,
    load_pan,
    split_users,
)
from curp_chain.runtime.prompt import ChatTurn
from curp_chain.tasks.base import ProfileItem, Task, TaskDataError, TaskExample, example_record

QUESTIONS_FILE = "questions.json"
OUTPUTS_FILE = "outputs.json"

LAMP7_INSTRUCTION = "Paraphrase the following tweet without any explanation before or after it: "
"""The instruction every LaMP-7 input starts with; the tweet to paraphrase follows it."""

_INSTRUCTION = re.compile(r"^\s*paraphrase the following tweet[^:]*:\s*", re.IGNORECASE)


PARAPHRASE_SYSTEM = (
    "You paraphrase tweets. Reply with the paraphrased tweet only, nothing before or after it."
)
"""Replaces the model's default system message. On the first 30 LaMP-7 users it lifted the
plain prompt's ROUGE-1 from 0.355 to 0.405 (docs/experiments.md): without it SmolLM2 often
refuses or explains instead of paraphrasing."""


def paraphrase_turns(user_message: str) -> list[ChatTurn]:
    """The request: the system message, then the LaMP-7 input as the one user turn."""
    return [ChatTurn("system", PARAPHRASE_SYSTEM), ChatTurn("user", user_message)]


class LampDataError(TaskDataError):
    """A LaMP folder is missing a file or holds data in another layout."""


@dataclass(frozen=True)
class LampExample:
    """One user: the request, the user's earlier items (the profile) and the gold reply."""

    id: str
    input: str
    """The full request, instruction included, as LaMP gives it."""
    profile: tuple[ProfileItem, ...]
    gold: str

    @property
    def source(self) -> str:
        """The text to paraphrase: the input without its instruction."""
        return source_text(self.input)

    @property
    def profile_texts(self) -> list[str]:
        return [item.text for item in self.profile]

    def fingerprint(self) -> str:
        """Changes whenever anything a method or a metric reads changes."""
        payload = json.dumps(
            [self.id, self.input, self.gold, [[p.id, p.text] for p in self.profile]],
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def source_text(request: str) -> str:
    """The tweet inside a LaMP-7 request ("Paraphrase the following tweet ...: <tweet>")."""
    return _INSTRUCTION.sub("", request, count=1).strip()


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise LampDataError(
            f"{path} not found: a LaMP folder holds {QUESTIONS_FILE} and {OUTPUTS_FILE}"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LampDataError(f"cannot read {path}: {error}") from None


def _profile(question: dict[str, Any], where: str) -> tuple[ProfileItem, ...]:
    items = question.get("profile")
    if not isinstance(items, list):
        raise LampDataError(f"{where}: 'profile' must be a list of {{'id', 'text'}} objects")
    profile = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise LampDataError(f"{where}: profile item {index} has no 'text' string")
        if item["text"].strip():
            profile.append(ProfileItem(str(item.get("id", index)), item["text"]))
    return tuple(profile)


def load_lamp(folder: str | Path, limit: int | None = None) -> list[LampExample]:
    """The examples of a LaMP folder in file order, the first ``limit`` of them if given."""
    path = Path(folder)
    if not path.is_dir():
        raise LampDataError(f"{path} is not a folder (expected {QUESTIONS_FILE}, {OUTPUTS_FILE})")
    questions = _read_json(path / QUESTIONS_FILE)
    outputs = _read_json(path / OUTPUTS_FILE)
    if not isinstance(questions, list):
        raise LampDataError(f"{path / QUESTIONS_FILE}: expected a list of questions")
    if not isinstance(outputs, dict) or not isinstance(outputs.get("golds"), list):
        raise LampDataError(f'{path / OUTPUTS_FILE}: expected {{"golds": [{{"id", "output"}}]}}')
    golds: dict[str, str] = {}
    for gold in outputs["golds"]:
        if not isinstance(gold, dict) or not isinstance(gold.get("output"), str):
            raise LampDataError(f"{path / OUTPUTS_FILE}: every gold needs 'id' and 'output'")
        golds[str(gold.get("id"))] = gold["output"]
    examples = []
    for number, question in enumerate(questions):
        where = f"{path / QUESTIONS_FILE}: question {number}"
        if not isinstance(question, dict) or not isinstance(question.get("input"), str):
            raise LampDataError(f"{where} has no 'input' string")
        qid = str(question.get("id"))
        if qid not in golds:
            raise LampDataError(f"{where} (id {qid!r}) has no gold in {OUTPUTS_FILE}")
        examples.append(LampExample(qid, question["input"], _profile(question, where), golds[qid]))
        if limit is not None and len(examples) >= limit:
            break
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        raise LampDataError(f"{path / QUESTIONS_FILE}: question ids are not unique")
    return examples


class Lamp7Task(Task):
    name = "lamp7"
    description = "LaMP-7 personalized tweet paraphrasing"
    instruction = LAMP7_INSTRUCTION
    history_header = "Earlier tweets written by this user:"
    history_footer = "Write the paraphrase in the same style as this user's tweets."
    copy_applies = True

    system = PARAPHRASE_SYSTEM

    def request(self, text: str, context: Sequence[ChatTurn] = ()) -> tuple[ChatTurn, ...]:
        # Tweets are never cut; paraphrase_turns reads the system message at call time.
        system, user = paraphrase_turns(self.instruction + text)
        return (system, *context, user)

    def source_of(self, record: ExampleRecord) -> str:
        return source_text(record.messages[-1].content)

    def eval_examples(
        self, data_dir: str | Path, split: str = "dev", per_user: int | None = None
    ) -> list[TaskExample]:
        """The LaMP-7 folder's users in file order, one query each."""
        self.check_split(split)
        if split != "dev":
            raise TaskDataError("lamp7 evaluates on its dev folder only (--split dev)")
        return [
            TaskExample(e.id, e.id, tuple(paraphrase_turns(e.input)), e.gold, e.profile, e.source)
            for e in load_lamp(self.folder(data_dir))
        ]

    def records(self, data_dir: str | Path, split: str) -> tuple[list[ExampleRecord], Histories]:
        """dev: the LaMP-7 folder. train: PAN 2019 users with accepted paraphrase sources in
        the default source cache (see :func:`training_records` for other caches)."""
        self.check_split(split)
        if split == "train":
            return training_records(data_dir)
        examples, histories = [], {}
        for e in load_lamp(self.folder(data_dir)):
            user = f"lamp7:{e.id}"
            histories[user] = [ItemRecord(text=p.text, id=p.id) for p in e.profile]
            examples.append(example_record(self, user, e.source, e.gold))
        return examples, histories


def _lamp7(data_dir: str | Path | None) -> list[LampExample]:
    return load_lamp(Path(data_dir or default_data_dir()) / "lamp7")


def load_lamp7_profiles(data_dir: str | Path | None = None) -> list[UserTexts]:
    """The LaMP-7 users' profile tweets (never their gold outputs)."""
    users = []
    for example in _lamp7(data_dir):
        texts = clean_profile(example.profile_texts)
        if texts:
            users.append(UserTexts(f"lamp7:{example.id}", "lamp7", texts))
    return users


def load_lamp7_validation(data_dir: str | Path | None = None) -> list[LampExample]:
    """The LaMP-7 queries whose profile holds at least one item, with their golds. For
    validation only."""
    return [example for example in _lamp7(data_dir) if clean_profile(example.profile_texts)]


def training_records(
    data_dir: str | Path | None,
    sources: str | Path | None = None,
    *,
    held_out_fraction: float = 0.1,
    seed: int = 0,
    max_users: int | None = None,
) -> tuple[list[ExampleRecord], Histories]:
    """PAN 2019 training users (the held-out ones left out, as `curp train` splits them)
    as generic examples: for each tweet with an accepted source, the LaMP-7 request on the
    source and the tweet as the target (``item_id`` names it in the history)."""
    path = Path(sources or default_cache_dir() / "sources-smollm2.jsonl")
    if not path.is_file():
        raise TaskDataError(f"{path} not found: run `curp train sources` first, or pass --sources")
    accepted = SourceCache(path).accepted()
    users, _ = split_users(load_pan(data_dir, max_users=max_users), held_out_fraction, seed)
    task = Lamp7Task()
    examples: list[ExampleRecord] = []
    histories: Histories = {}
    for user in users:
        ids = [f"{user.user_id}:{i}" for i in range(len(user.texts))]
        histories[user.user_id] = [
            ItemRecord(text=t, id=i) for t, i in zip(user.texts, ids, strict=True)
        ]
        for tweet, item_id in zip(user.texts, ids, strict=True):
            if accepted.get(tweet):
                examples.append(
                    example_record(task, user.user_id, accepted[tweet], tweet, item_id=item_id)
                )
    return examples, histories
