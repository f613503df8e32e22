"""Everyday assistant requests answered for a person: the requests, the users, the teacher's
prompt and the checks on its answers.

A user asks an everyday question ("What should I cook tonight?", "Recommend a book") and the
answer should fit what their history says about them. The answers to learn from come from a
larger teacher model that reads the user's items as text (:mod:`curp_chain.training.teacher`
runs it and caches its answers); a CURP student later learns to give them from the user's
codes alone.

- **Requests**: ``assist_requests.json`` beside this module, several hundred requests of 17
  kinds. About a fifth are held out for evaluation, chosen by a hash of the request id
  (:func:`is_held_out_request`), so the split never moves when requests are added.
- **Users**: real users of the shared data (PAN 2019 tweets, Reddit authors, AESLC senders'
  subject lines); training users are PAN's training split (the split training uses), Reddit
  train and AESLC train; held-out users are PAN's held-out split, Reddit dev and AESLC dev.
  Ids carry their corpus (``pan19:``, ``reddit:``, ``aeslc:``).
- **Prompt**: the system message shows up to :data:`MAX_SHOWN` of the user's items, the ones
  nearest the request first, then the newest (or, with the teacher's ``--shown typical``, the
  ones nearest the user's centroid, whatever the request); the user turn is the request.
- **Checks**: every answer is stored with its scores (:class:`AnswerScores`), and
  :class:`AssistFilters` decides from the scores alone, so thresholds can change without
  generating again.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from curp_chain.data.refusal import is_degenerate, is_refusal
from curp_chain.data.users import default_data_dir, load_pan, split_users, text_key
from curp_chain.errors import CurpError
from curp_chain.runtime.prompt import ChatTurn
from curp_chain.tasks.aeslc import AeslcTask
from curp_chain.tasks.base import ProfileItem, cut
from curp_chain.tasks.reddit import RedditTask

REQUESTS_PATH = Path(__file__).with_name("assist_requests.json")
HELD_OUT_REQUEST_FRACTION = 0.2
"""Share of requests kept for evaluation, chosen by :func:`is_held_out_request`."""

PAN_HELD_OUT_FRACTION = 0.1
PAN_SPLIT_SEED = 0
"""PAN's user split: the one `curp train` uses (``split_users(users, 0.1, seed=0)``), so a
held-out PAN user here is held out of projector training too."""

CORPORA = ("pan19", "reddit", "aeslc")

MAX_SHOWN = 8
"""Items of the user's history shown to the teacher."""
BY_SIMILARITY = 5
"""Of those, this many are the items nearest the request; the newest items fill the rest."""
MAX_ITEM_CHARS = 200
"""Longer items are cut at a word boundary: a Reddit post can run to pages."""
MAX_CANDIDATES = 100
"""Items considered per user (the newest): bounds encoding work for senders with hundreds."""

RequestSplit = Literal["train", "held_out", "all"]
UserSplit = Literal["train", "held_out"]


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssistRequest:
    id: str
    kind: str
    text: str


def is_held_out_request(request_id: str) -> bool:
    """Whether a request is kept for evaluation: the first 8 bytes of
    sha256("assist-request:" + id), as a fraction of 2**64, fall below
    :data:`HELD_OUT_REQUEST_FRACTION`."""
    digest = hashlib.sha256(f"assist-request:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELD_OUT_REQUEST_FRACTION


@lru_cache(maxsize=4)
def _all_requests(path: Path) -> tuple[AssistRequest, ...]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["requests"]
        requests = tuple(AssistRequest(r["id"], r["kind"], r["text"]) for r in rows)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CurpError(
            f"{path}: cannot read the assistant requests ({error}); reinstall curp-chain"
        ) from None
    if len({r.id for r in requests}) != len(requests):
        raise CurpError(f"{path}: request ids must be unique")
    return requests


def load_requests(split: RequestSplit = "all", path: Path | None = None) -> list[AssistRequest]:
    """The everyday requests of ``split``: "train", "held_out" (about a fifth, for
    evaluation only) or "all", in file order."""
    if split not in ("train", "held_out", "all"):
        raise CurpError(f"unknown request split {split!r}; choose train, held_out or all")
    requests = _all_requests(path or REQUESTS_PATH)
    if split == "all":
        return list(requests)
    held = split == "held_out"
    return [r for r in requests if is_held_out_request(r.id) == held]


# --- users ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssistUser:
    user_id: str
    """Prefixed with the corpus: "pan19:...", "reddit:...", "aeslc:..."."""
    corpus: str
    items: tuple[ProfileItem, ...]
    """Oldest first, texts distinct. An item's id is the corpus' own (Reddit fullname, AESLC
    file name), or the text's :func:`~curp_chain.data.users.text_key` for tweets, which have
    none."""


_SPACES = re.compile(r"\s+")
_REPLY_PREFIX = re.compile(r"^(?:(?:re|fw|fwd)\s*:\s*)+", re.IGNORECASE)


def _distinct(items: Sequence[ProfileItem]) -> tuple[ProfileItem, ...]:
    seen: dict[str, ProfileItem] = {}
    for item in items:
        text = _SPACES.sub(" ", item.text).strip()
        if text and text.lower() not in seen:
            seen[text.lower()] = ProfileItem(item.id, text)
    return tuple(seen.values())


def _pan_users(data_dir: Path, split: UserSplit) -> list[AssistUser]:
    train, held = split_users(load_pan(data_dir), PAN_HELD_OUT_FRACTION, PAN_SPLIT_SEED)
    # PAN lists a user's tweets newest first; items here are oldest first.
    users = train if split == "train" else held
    return [
        AssistUser(
            u.user_id, "pan19", _distinct([ProfileItem(text_key(t), t) for t in u.texts[::-1]])
        )
        for u in users
    ]


def _task_users(data_dir: Path, corpus: str, split: UserSplit) -> list[AssistUser]:
    task = RedditTask() if corpus == "reddit" else AeslcTask()
    _, histories = task.records(data_dir, "train" if split == "train" else "dev")
    users = []
    for user_id, records in histories.items():
        items = [
            # A subject's "Re:"/"Fw:" says nothing about the person.
            ProfileItem(r.id or text_key(r.text), _REPLY_PREFIX.sub("", r.text.strip()))
            for r in records
        ]
        users.append(AssistUser(user_id, corpus, _distinct(items)))
    return users


def load_users(
    data_dir: str | Path | None = None,
    split: UserSplit = "train",
    *,
    corpora: Sequence[str] = CORPORA,
    min_items: int = 5,
) -> list[AssistUser]:
    """Users of ``split`` from ``corpora``, each with at least ``min_items`` distinct items."""
    unknown = set(corpora) - set(CORPORA)
    if unknown:
        raise CurpError(f"unknown corpora {sorted(unknown)}; choose from {', '.join(CORPORA)}")
    folder = Path(data_dir or default_data_dir())
    users: list[AssistUser] = []
    for corpus in corpora:
        loaded = (
            _pan_users(folder, split) if corpus == "pan19" else _task_users(folder, corpus, split)
        )
        users.extend(u for u in loaded if len(u.items) >= min_items)
    return users


def _rank(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def interleave_users(users: Sequence[AssistUser], seed: int = 0) -> list[AssistUser]:
    """Users in a stable order that takes the corpora in turn (each corpus in the order of a
    hash of its user ids), so the first N users cover every corpus."""
    by_corpus: dict[str, list[AssistUser]] = {}
    for user in sorted(users, key=lambda u: _rank(u.user_id, seed)):
        by_corpus.setdefault(user.corpus, []).append(user)
    queues = [by_corpus[c] for c in sorted(by_corpus)]
    order: list[AssistUser] = []
    for index in range(max((len(q) for q in queues), default=0)):
        order.extend(q[index] for q in queues if index < len(q))
    return order


def requests_for(
    user_id: str, requests: Sequence[AssistRequest], k: int, seed: int = 0
) -> list[AssistRequest]:
    """``k`` requests for one user, of different kinds while kinds last, drawn by a
    generator seeded with the user id: the same user always gets the same requests."""
    rng = random.Random(f"{seed}:{user_id}")
    by_kind: dict[str, list[AssistRequest]] = {}
    for request in requests:
        by_kind.setdefault(request.kind, []).append(request)
    kinds = sorted(by_kind)
    rng.shuffle(kinds)
    chosen: list[AssistRequest] = []
    while len(chosen) < min(k, len(requests)):
        for kind in kinds:
            left = [r for r in by_kind[kind] if r not in chosen]
            if left and len(chosen) < k:
                chosen.append(rng.choice(left))
    return chosen


def pair_order(
    users: Sequence[AssistUser], requests: Sequence[AssistRequest], per_user: int, seed: int = 0
) -> list[tuple[AssistUser, AssistRequest]]:
    """(user, request) pairs, ``per_user`` per user, round-robin over users in the order
    given: the first pass gives every user one request, the next a second one, ... so any
    prefix covers as many users as it can."""
    chosen = [(user, requests_for(user.user_id, requests, per_user, seed)) for user in users]
    return [
        (user, picks[index])
        for index in range(per_user)
        for user, picks in chosen
        if index < len(picks)
    ]


# --- the teacher's prompt ---------------------------------------------------------------------


WORDINGS: dict[str, tuple[str, str]] = {
    "posts": (
        "You are a helpful assistant. Here are some things the user wrote recently:\n"
        "{items}\n\n"
        "Answer the user's request directly in 1-3 sentences. Make the answer fit their "
        'interests and life, speak to them as "you", and do not quote or repeat what they '
        "wrote.",
        "{request}",
    ),
    "interests": (
        "You are a helpful assistant who knows the user well. Their recent posts show what "
        "they care about:\n"
        "{items}\n\n"
        "Reply to their next message with one concrete answer in 1-3 sentences that suits "
        "someone with these interests. Use your own words: never copy their posts.",
        "{request}",
    ),
    "brief": (
        "You are a helpful assistant. Here are some things the user wrote recently:\n"
        "{items}\n\n"
        "Answer the user's request in one or two sentences, with no list and no heading. "
        "Suggest something specific that fits what their posts show about them, speak to "
        'them as "you", and do not quote their posts.',
        "{request}",
    ),
    "reminder": (
        "You are a helpful assistant. What the user wrote recently, to show you their "
        "interests:\n"
        "{items}",
        "{request}\n\n"
        "(Answer me directly in 1-3 sentences, suited to my interests, in your own words.)",
    ),
}
"""Prompt wordings tried: name -> (system message, user turn). ``{items}`` is the shown items,
one "- item" line each; ``{request}`` the request."""

DEFAULT_WORDING = "posts"
"""The wording kept. Pilot with Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), the same 30 pairs (6
training users of the three corpora x 5 training requests) for each wording, answers cleaned
by :func:`clean_answer`, kept by the default :class:`AssistFilters`: posts 13 of 30,
interests 9, reminder 11, brief 11. Off-request answers: posts 2, interests 1, reminder 2,
brief 0; copies: 3, 2, 5, 5. "interests" and "reminder" write lists past the output limit
(6 and 8 cut off); "reminder" mixes up "I" and "you"; "brief" is shortest (21 output tokens
against 33) but copies a post more often when asked to be specific."""


def shown_text(item: ProfileItem) -> str:
    """An item as the teacher sees it: one line, cut to :data:`MAX_ITEM_CHARS`."""
    return cut_item(item.text)


def cut_item(text: str) -> str:
    """``text`` on one line, cut to :data:`MAX_ITEM_CHARS`."""
    return cut(_SPACES.sub(" ", text), MAX_ITEM_CHARS)


def candidates(user: AssistUser) -> tuple[ProfileItem, ...]:
    """The items a prompt may show: the user's newest :data:`MAX_CANDIDATES`, oldest first."""
    return user.items[-MAX_CANDIDATES:]


def select_items(
    items: Sequence[ProfileItem],
    item_vectors: torch.Tensor,
    request_vector: torch.Tensor,
    *,
    max_shown: int = MAX_SHOWN,
    by_similarity: int = BY_SIMILARITY,
) -> list[ProfileItem]:
    """The items to show: the ``by_similarity`` nearest the request (cosine of unit
    vectors, nearest first), then the newest of the rest up to ``max_shown``.
    ``items`` are oldest first; ``item_vectors`` (len(items), D) match them."""
    if len(items) != len(item_vectors):
        raise CurpError(f"{len(items)} items but {len(item_vectors)} vectors")
    similarity = item_vectors @ request_vector  # (N,)
    nearest = similarity.argsort(descending=True, stable=True).tolist()[:by_similarity]
    chosen = list(dict.fromkeys(nearest))
    for index in range(len(items) - 1, -1, -1):
        if len(chosen) >= max_shown:
            break
        if index not in chosen:
            chosen.append(index)
    return [items[i] for i in chosen[:max_shown]]


def typical_items(
    items: Sequence[ProfileItem], item_vectors: torch.Tensor, *, max_shown: int = MAX_SHOWN
) -> list[ProfileItem]:
    """The ``max_shown`` items nearest the user's centroid, most typical first: the same for
    every request, so all of a user's answers draw on what their history is mostly about
    rather than on the one item nearest each request."""
    if len(items) != len(item_vectors):
        raise CurpError(f"{len(items)} items but {len(item_vectors)} vectors")
    similarity = item_vectors @ centroid(item_vectors)
    order = similarity.argsort(descending=True, stable=True).tolist()
    return [items[i] for i in order[:max_shown]]


def teacher_turns(
    request: AssistRequest, shown: Sequence[ProfileItem], wording: str = DEFAULT_WORDING
) -> list[ChatTurn]:
    """The teacher's request: a system message with the shown items, then the request."""
    if wording not in WORDINGS:
        raise CurpError(f"unknown wording {wording!r}; choose from {', '.join(WORDINGS)}")
    system, user = WORDINGS[wording]
    items = "\n".join(f"- {shown_text(item)}" for item in shown)
    return [
        ChatTurn("system", system.format(items=items)),
        ChatTurn("user", user.format(request=request.text)),
    ]


# --- scores and filters -----------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_SENTENCE_END = re.compile(r"[.!?…)\]\"'’”*]\s*$|[^\x00-\u2000]\s*$")


def words(text: str) -> list[str]:
    """Lower-cased words (letters and digits, inner apostrophes kept)."""
    return [w.lower() for w in _WORD.findall(text)]


def longest_shared_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest run of consecutive words that ``a`` and ``b`` share."""
    best = 0
    previous = [0] * (len(b) + 1)
    for word in a:
        current = [0] * (len(b) + 1)
        for j, other in enumerate(b, start=1):
            if word == other:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def copy_scores(answer: str, shown: Sequence[str]) -> tuple[int, float]:
    """(longest run of words shared with any shown item, highest difflib ratio of the
    lower-cased answer against any shown item)."""
    answer_words = words(answer)
    run = max((longest_shared_run(answer_words, words(text)) for text in shown), default=0)
    ratio = max(
        (difflib.SequenceMatcher(None, answer.lower(), t.lower()).ratio() for t in shown),
        default=0.0,
    )
    return run, ratio


_LAST_SENTENCE = re.compile(r"^.*[.!?](?=[\s\"'’”)\]]|$)[\"'’”)\]]*", re.DOTALL)


def clean_answer(raw: str, finish: str) -> str:
    """The answer as kept: its first paragraph (a blank line starts a list or a second
    answer) and, when the output limit stopped it mid-sentence, only its complete sentences
    (unchanged if it has none)."""
    answer = raw.strip().split("\n\n", 1)[0].strip()
    if finish == "length" and not _SENTENCE_END.search(answer):
        whole = _LAST_SENTENCE.match(answer)
        if whole:
            return whole.group(0).strip()
    return answer


def is_cut_off(answer: str, finish: str) -> bool:
    """Whether the answer stops mid-sentence at the output limit, or announces a list it
    does not give (it ends with a colon)."""
    answer = answer.strip()
    return answer.endswith(":") or (finish == "length" and not _SENTENCE_END.search(answer))


class AnswerScores(BaseModel):
    """What the filters read, stored with each answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    refusal: bool
    """:func:`curp_chain.data.refusal.is_refusal`: the answer declines or disclaims."""
    degenerate: bool
    """:func:`curp_chain.data.refusal.is_degenerate`: empty, or the request echoed."""
    copy_run: int
    """Longest run of consecutive words shared with a shown item."""
    copy_ratio: float
    """Highest difflib ratio against a shown item (lower-cased)."""
    on_request: float
    """MiniLM cosine of the answer and the request."""
    tailored: float
    """MiniLM cosine of the answer and the user's history centroid, minus its mean cosine
    with other users' centroids: above 0 when the answer is nearer this user than others."""
    words: int
    cut_off: bool
    """:func:`is_cut_off`: stopped mid-sentence by the output limit, or ends on a colon."""


def answer_scores(
    answer: str,
    finish: str,
    request: AssistRequest,
    shown: Sequence[str],
    vectors: Mapping[str, torch.Tensor],
) -> AnswerScores:
    """Scores of one answer. ``vectors`` holds unit vectors: "answer" (D,), "request" (D,),
    "own" (D,) the user's centroid, "others" (N, D) other users' centroids."""
    answer_vector = vectors["answer"]
    run, ratio = copy_scores(answer, shown)
    own = float(answer_vector @ vectors["own"])
    others = vectors["others"]
    baseline = float((others @ answer_vector).mean()) if len(others) else 0.0
    return AnswerScores(
        refusal=is_refusal(answer),
        degenerate=is_degenerate(answer, request.text),
        copy_run=run,
        copy_ratio=round(ratio, 4),
        on_request=round(float(answer_vector @ vectors["request"]), 4),
        tailored=round(own - baseline, 4),
        words=len(answer.split()),
        cut_off=is_cut_off(answer, finish),
    )


def centroid(vectors: torch.Tensor) -> torch.Tensor:
    """The unit-length mean of (N, D) unit vectors."""
    return torch.nn.functional.normalize(vectors.mean(0), dim=-1)


class AssistFilters(BaseModel):
    """Which stored answers are kept: each check reads only :class:`AnswerScores`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_copy_run: int = 5
    """reject an answer sharing a run of more words than this with a shown item"""
    max_copy_ratio: float = 0.6
    """reject an answer whose difflib ratio against a shown item is above this"""
    min_on_request: float = 0.25
    """reject an answer whose MiniLM cosine with the request is below this (off the request)"""
    min_tailored: float = 0.0
    """reject an answer no nearer the user's history than other users' (tailored score)"""
    min_words: int = 5
    max_words: int = 80

    def reasons(self, scores: AnswerScores) -> list[str]:
        """The names of the checks ``scores`` fail; empty when the answer is kept."""
        failed = []
        if scores.refusal or scores.degenerate:
            failed.append("refusal")
        if scores.copy_run > self.max_copy_run or scores.copy_ratio > self.max_copy_ratio:
            failed.append("copy")
        if scores.on_request < self.min_on_request:
            failed.append("off_request")
        if scores.tailored < self.min_tailored:
            failed.append("untailored")
        if not self.min_words <= scores.words <= self.max_words or scores.cut_off:
            failed.append("length")
        return failed


def is_kept(record: Mapping[str, Any], filters: AssistFilters | None = None) -> bool:
    """Whether a stored teacher record has an answer that ``filters`` (default thresholds
    when None) keep, judged from its stored scores."""
    if not record.get("answer"):
        return False
    scores = AnswerScores.model_validate(record["scores"])
    return not (filters or AssistFilters()).reasons(scores)
