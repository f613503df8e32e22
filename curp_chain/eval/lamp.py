"""LaMP data in the official layout: ``questions.json`` and ``outputs.json`` in one folder.

``questions.json`` is ``[{"id", "input", "profile": [{"id", "text", ...}, ...]}]`` and
``outputs.json`` is ``{"task", "golds": [{"id", "output"}]}``. Examples keep the file order,
so ``--limit N`` always means the same first N users.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curp_chain.errors import CurpError

QUESTIONS_FILE = "questions.json"
OUTPUTS_FILE = "outputs.json"

LAMP7_INSTRUCTION = "Paraphrase the following tweet without any explanation before or after it: "
"""The instruction every LaMP-7 input starts with; the tweet to paraphrase follows it."""

_INSTRUCTION = re.compile(r"^\s*paraphrase the following tweet[^:]*:\s*", re.IGNORECASE)


class LampDataError(CurpError, ValueError):
    """A LaMP folder is missing a file or holds data in another layout."""


@dataclass(frozen=True)
class ProfileItem:
    id: str
    text: str


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
