"""Teacher answers to everyday requests, for sequence-level distillation into a CURP student.

A teacher LLM reads a user's history as text (:mod:`curp_chain.tasks.assist` builds its
prompt) and answers an everyday request for that user; a student later learns the answers
from soft tokens alone. Answers are appended to a JSONL cache, one line per (user, request),
so an interrupted run resumes where it stopped::

    python -m curp_chain.training.teacher --teacher-gguf PATH [--limit N] [--split eval]

Order: the evaluation pairs first (held-out users x held-out requests), then the training
pairs (training users x training requests), each round-robin over users so any prefix covers
as many users as it can.

The cache holds no history text: a record names the items shown by id and stores the raw
answer, its scores (:class:`~curp_chain.tasks.assist.AnswerScores`), seconds and token
counts. The raw output is kept beside the answer made from it
(:func:`~curp_chain.tasks.assist.clean_answer`), except for an answer that fails the copy
check: both are stored blank, so the cache never holds a user's post.
:meth:`TeacherCache.accepted` applies the current
:class:`~curp_chain.tasks.assist.AssistFilters` to the stored scores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm.auto import tqdm

from curp_chain.data.jsonl import read_jsonl
from curp_chain.data.users import default_cache_dir, text_key
from curp_chain.errors import CurpError
from curp_chain.interfaces.protocols import GenerationParams, SoftPrompt, SoftPromptBackend
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.runtime.defaults import open_llamacpp_backend
from curp_chain.runtime.prompt import build_soft_prompt
from curp_chain.tasks.assist import (
    DEFAULT_WORDING,
    WORDINGS,
    AnswerScores,
    AssistFilters,
    AssistRequest,
    AssistUser,
    answer_scores,
    candidates,
    centroid,
    clean_answer,
    interleave_users,
    is_kept,
    load_requests,
    load_users,
    pair_order,
    select_items,
    shown_text,
    teacher_turns,
    typical_items,
)

logger = logging.getLogger(__name__)

TEACHER_GGUF_ENV = "CURP_TEACHER_GGUF"
STOP = ("\n\n",)

Pair = tuple[AssistUser, AssistRequest, str]
"""(user, request, "eval" or "train")."""


class TeacherOptions(BaseModel):
    """`python -m curp_chain.training.teacher`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    teacher_gguf: str | None = None
    """GGUF file of the teacher chat model (default: $CURP_TEACHER_GGUF; required)"""
    data_dir: str | None = None
    """folder with pan19/, reddit/ and aeslc/ (default: $CURP_DATA_DIR, else ../shared/data)"""
    cache_dir: str | None = None
    """folder of the answer cache (default: $CURP_CACHE_DIR, else data-cache/)"""
    cache: str | None = None
    """the JSONL answer cache (default: <cache-dir>/assist-teacher-<teacher>.jsonl)"""
    split: Literal["all", "eval", "train"] = "all"
    """eval: held-out users x held-out requests; train: training users x training requests;
    all: eval pairs first, then train pairs"""
    limit: int | None = Field(default=None, ge=1)
    """generate at most this many new answers in this run (default: no limit)"""
    threads: int = Field(default=1, ge=1)
    """CPU threads for llama.cpp and the encoder"""
    seed: int = 0
    """seed of the user order and of each user's requests"""
    eval_users: int = Field(default=60, ge=1)
    """held-out users in the evaluation set, the corpora taken in turn"""
    eval_per_user: int = Field(default=5, ge=1)
    """held-out requests per evaluation user"""
    train_per_user: int = Field(default=4, ge=1)
    """training requests per training user"""
    train_users: int | None = Field(default=None, ge=1)
    """answer for only the first N training users (corpora in turn), with --train-per-user
    requests each: several answers per user for fewer users (default: every training user)"""
    wording: str = DEFAULT_WORDING
    """the teacher prompt's wording (curp_chain.tasks.assist.WORDINGS)"""
    shown: Literal["request", "typical"] = "request"
    """which items the teacher sees: request (those nearest the request, then the newest) or
    typical (those nearest the user's centroid, the same for every request; a --cache folder
    of its own)"""
    max_new_tokens: int = Field(default=64, ge=8)
    """output limit of one answer"""
    samples: int = Field(default=1, ge=1)
    """answers drawn per pair: the greedy one, then samples - 1 at --temperature; the most
    tailored one that passes the filters is stored (best of n; use a --cache folder of its
    own, since a folder holds answers of one setting)"""
    temperature: float = Field(default=0.8, gt=0)
    """temperature of the sampled answers (with --samples above 1)"""
    n_ctx: int = Field(default=2048, ge=512)
    """teacher context window in tokens"""
    progress: bool = True
    """show a progress bar"""
    shards: int = Field(default=1, ge=1)
    """split the pairs into this many shards, one per process (each with its own --cache)"""
    shard: int = Field(default=0, ge=0)
    """the shard this process answers: pairs shard, shard + shards, ... (0-based)"""

    @model_validator(mode="after")
    def _shard_in_range(self) -> TeacherOptions:
        if self.shard >= self.shards:
            raise ValueError(f"--shard must be below --shards ({self.shards})")
        return self


# --- the cache --------------------------------------------------------------------------------


class TeacherCache:
    """An append-only JSONL file of teacher answers, keyed by a hash of (teacher, settings,
    prompt text). A run killed mid-write leaves a partial last line: it is skipped, and the
    next append starts on a line of its own."""

    def __init__(self, path: str | Path, *, siblings: bool = True):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.settings: set[str] = set()
        """The generation settings of every answer in the folder."""
        self._pairs: set[tuple[str, str, str, str]] = set()
        # Other processes' shards write beside this file: their pairs are answered too.
        others = sorted(self.path.parent.glob("*.jsonl")) if siblings else []
        for file in [*(f for f in others if f != self.path), self.path]:
            if file.is_file():
                for _, record in read_jsonl(file, skip_unreadable=True):
                    try:
                        self._index(record, own=file == self.path)
                    except (KeyError, TypeError):
                        logger.warning("%s: skipping a record without its fields", file)

    def _index(self, record: dict[str, Any], *, own: bool = True) -> None:
        if own:
            self.records[record["key"]] = record
        if "settings" in record:
            self.settings.add(record["settings"])
        self._pairs.add(
            (record["teacher"], record["wording"], record["user_id"], record["request_id"])
        )

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def has_pair(self, teacher: str, wording: str, user_id: str, request_id: str) -> bool:
        """Whether this teacher already answered this request for this user with this
        wording: lets a resumed run skip the pair without building its prompt again."""
        return (teacher, wording, user_id, request_id) in self._pairs

    def add(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as out:
            out.seek(0, os.SEEK_END)
            if out.tell():
                out.seek(-1, os.SEEK_END)
                if out.read(1) != b"\n":
                    out.write(b"\n")  # close a partial line a killed run left
            out.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._index(record)

    def accepted(
        self, filters: AssistFilters | None = None, split: str | None = None
    ) -> list[dict[str, Any]]:
        """The records the ``filters`` keep (default thresholds when None), of ``split``
        ("eval" or "train") when given, in the order they were generated."""
        return [
            r
            for r in self.records.values()
            if (split is None or r["split"] == split) and is_kept(r, filters)
        ]


def check_cache_settings(cache: TeacherCache, settings: str) -> None:
    """Refuse a cache folder that holds answers of other settings: a pair answered there is
    not answered again, and readers take one answer per pair, so the settings would mix."""
    other = sorted(cache.settings - {settings})
    if other:
        raise CurpError(
            f"{cache.path.parent} holds teacher answers made with other settings "
            f"({'; '.join(other)}), not {settings}: pass a --cache in a folder of its own"
        )


def default_cache_path(cache_dir: str | Path | None, teacher: str) -> Path:
    """``<cache-dir>/assist-teacher-<teacher slug>.jsonl``."""
    slug = "".join(c if c.isalnum() or c == "." else "-" for c in teacher.lower()).strip("-")
    return Path(cache_dir or default_cache_dir()) / f"assist-teacher-{slug}.jsonl"


# --- the teacher ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Draw:
    """One answer the teacher drew for a pair, with its scores."""

    raw: str
    answer: str
    finish: str
    seconds: float
    usage: dict[str, Any]
    scores: AnswerScores
    kept: bool


class Teacher:
    """The teacher LLM and the encoder that picks and scores; one answer at a time."""

    def __init__(
        self,
        backend: SoftPromptBackend,
        encoder: SentenceEncoder,
        *,
        wording: str = DEFAULT_WORDING,
        max_new_tokens: int = 64,
        panel: dict[str, list[tuple[str, torch.Tensor]]] | None = None,
        samples: int = 1,
        temperature: float = 0.8,
        filters: AssistFilters | None = None,
        shown: Literal["request", "typical"] = "request",
    ):
        if wording not in WORDINGS:
            raise CurpError(f"unknown wording {wording!r}; choose from {', '.join(WORDINGS)}")
        self.backend = backend
        self.encoder = encoder
        self.wording = wording
        # Greedy; repeated 4-grams blocked, as everywhere else, since small models loop. A
        # blank line ends the answer: past it come the lists and headings a 1-3 sentence
        # answer has no room for (the pilot's answers ran into the limit that way).
        self.params = GenerationParams(max_tokens=max_new_tokens, temperature=0.0, stop=STOP)
        self.teacher_id = backend.model_id
        limits = f"max_tokens={max_new_tokens},no_repeat_ngram_size=4,stop=blank"
        self.settings = f"greedy,{limits}"
        self.samples = samples
        self.temperature = temperature
        if samples > 1:  # the greedy answer and samples - 1 sampled ones
            self.settings = f"best_of={samples},temperature={temperature},{limits}"
        self.shown = shown
        if shown != "request":  # request-picked answers keep the keys they were cached under
            self.settings += f",shown={shown}"
        self.filters = filters or AssistFilters()
        self.panel = panel or {}
        """corpus -> [(user id, centroid)] of reference users for the tailored score."""
        self._vectors: OrderedDict[str, torch.Tensor] = OrderedDict()

    def item_vectors(self, user: AssistUser) -> torch.Tensor:
        """(len(candidates(user)), D) unit vectors of the user's shown texts; the last 256
        users are kept, so the rounds of a short run encode each user once."""
        if user.user_id not in self._vectors:
            texts = [shown_text(i) for i in candidates(user)]
            self._vectors[user.user_id] = self.encoder.encode(texts)
            if len(self._vectors) > 256:
                self._vectors.popitem(last=False)
        self._vectors.move_to_end(user.user_id)
        return self._vectors[user.user_id]

    def others(self, user: AssistUser) -> torch.Tensor:
        """(N, D) centroids of the reference users of the user's corpus, the user left out."""
        rows = [c for uid, c in self.panel.get(user.corpus, []) if uid != user.user_id]
        return torch.stack(rows) if rows else torch.zeros(0, self.encoder.dim)

    def key(self, prompt_text: str) -> str:
        return text_key(f"{self.teacher_id}\n{self.settings}\n{prompt_text}")

    def draw_params(self) -> list[GenerationParams]:
        """The greedy answer's settings, then one seeded sampling setting per extra sample."""
        sampled = [
            replace(self.params, temperature=self.temperature, seed=seed)
            for seed in range(1, self.samples)
        ]
        return [self.params, *sampled]

    def draw(
        self,
        prompt: SoftPrompt,
        params: GenerationParams,
        request: AssistRequest,
        shown: Sequence[str],
        vectors: dict[str, torch.Tensor],
    ) -> Draw:
        """One answer to ``prompt``, scored against the request, the shown items and the users
        in ``vectors`` ("request", "own", "others")."""
        start = time.monotonic()
        chunks = list(self.backend.stream(prompt, params))
        seconds = time.monotonic() - start
        raw = "".join(c.text for c in chunks)
        finish = chunks[-1].finish_reason or "stop"
        answer = clean_answer(raw, finish)
        vectors = {**vectors, "answer": self.encoder.encode([answer or " "])[0]}
        scores = answer_scores(answer, finish, request, shown, vectors)
        kept = not self.filters.reasons(scores)
        return Draw(raw, answer, finish, seconds, dict(chunks[-1].usage), scores, kept)

    def answer(self, user: AssistUser, request: AssistRequest, split: str) -> dict[str, Any]:
        """The cache record of the teacher's answer to ``request`` for ``user``: with several
        samples, the most tailored kept draw (else the greedy one), the seconds and output
        tokens of all draws, and each draw's tailored score and verdict under "drawn"."""
        items = candidates(user)
        item_vectors = self.item_vectors(user)
        request_vector = self.encoder.encode([request.text])[0]
        if self.shown == "typical":
            shown = typical_items(items, item_vectors)
        else:
            shown = select_items(items, item_vectors, request_vector)
        turns = teacher_turns(request, shown, self.wording)
        prompt = build_soft_prompt(
            self.backend.chat_template, turns, None, self.backend.special_tokens
        )
        vectors = {
            "request": request_vector,
            "own": centroid(item_vectors),
            "others": self.others(user),
        }
        texts = [shown_text(i) for i in shown]
        draws = [self.draw(prompt, p, request, texts, vectors) for p in self.draw_params()]
        kept = [d for d in draws if d.kept]
        best = max(kept, key=lambda d: d.scores.tailored) if kept else draws[0]
        record = {
            "key": self.key(prompt.before + prompt.after),
            "teacher": self.teacher_id,
            "settings": self.settings,
            "wording": self.wording,
            "split": split,
            "user_id": user.user_id,
            "corpus": user.corpus,
            "request_id": request.id,
            "kind": request.kind,
            "shown": [i.id for i in shown],
            "raw": best.raw,
            "answer": best.answer,
            "finish": best.finish,
            "scores": best.scores.model_dump(),
            "seconds": round(sum(d.seconds for d in draws), 3),
            "tokens": {
                "input": int(best.usage.get("input_tokens", 0)),
                "output": sum(int(d.usage.get("output_tokens", 0)) for d in draws),
            },
        }
        if len(draws) > 1:
            record["drawn"] = [{"tailored": d.scores.tailored, "kept": d.kept} for d in draws]
        return record


def reference_panel(
    encoder: SentenceEncoder, users: Sequence[AssistUser], per_corpus: int = 20, seed: int = 0
) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """Each corpus' first ``per_corpus`` users in the stable order, with their history
    centroids: the other users an answer's tailored score compares against."""
    panel: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for user in interleave_users(users, seed):
        chosen = panel.setdefault(user.corpus, [])
        if len(chosen) < per_corpus:
            texts = [shown_text(i) for i in candidates(user)]
            chosen.append((user.user_id, centroid(encoder.encode(texts))))
    return panel


# --- the run ----------------------------------------------------------------------------------


def plan_pairs(options: TeacherOptions) -> tuple[list[Pair], list[AssistUser]]:
    """The pairs to answer, in order, and the training users (the reference panel's pool)."""
    train_users = load_users(options.data_dir, "train")
    pairs: list[Pair] = []
    if options.split in ("all", "eval"):
        held = interleave_users(load_users(options.data_dir, "held_out"), options.seed)
        chosen = held[: options.eval_users]
        requests = load_requests("held_out")
        pairs += [
            (u, r, "eval")
            for u, r in pair_order(chosen, requests, options.eval_per_user, options.seed)
        ]
    if options.split in ("all", "train"):
        ordered = interleave_users(train_users, options.seed)[: options.train_users]
        requests = load_requests("train")
        pairs += [
            (u, r, "train")
            for u, r in pair_order(ordered, requests, options.train_per_user, options.seed)
        ]
    return pairs[options.shard :: options.shards], train_users


def generate(
    teacher: Teacher,
    pairs: Sequence[Pair],
    cache: TeacherCache,
    *,
    limit: int | None = None,
    filters: AssistFilters | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Answer every pair not in ``cache`` yet, appending each record as it comes; stops
    after ``limit`` new answers. Returns counts of this run: new, skipped, accepted and each
    filter's rejections."""
    filters = filters or AssistFilters()
    todo = [
        p
        for p in pairs
        if not cache.has_pair(teacher.teacher_id, teacher.wording, p[0].user_id, p[1].id)
    ]
    if limit is not None:
        todo = todo[:limit]
    counts = {"new": 0, "skipped": len(pairs) - len(todo), "accepted": 0}
    logger.info("%d pairs, %d already answered, %d to go", len(pairs), counts["skipped"], len(todo))
    bar = tqdm(total=len(todo), desc="teacher answers", unit="answer", disable=not progress)
    start, llm_seconds = time.monotonic(), 0.0
    for user, request, split in todo:
        record = teacher.answer(user, request, split)
        failed = filters.reasons(AnswerScores.model_validate(record["scores"]))
        if "copy" in failed:  # the cache keeps no text that repeats a user's post
            record = {**record, "answer": "", "raw": ""}
        if record["key"] not in cache:
            cache.add(record)
        counts["new"] += 1
        llm_seconds += record["seconds"]
        counts["accepted"] += not failed
        for reason in failed:
            counts[reason] = counts.get(reason, 0) + 1
        bar.update(1)
        bar.set_postfix(kept=f"{counts['accepted'] / counts['new']:.0%}", cached=len(cache))
        if counts["new"] % 50 == 0:
            _log_cost(counts, time.monotonic() - start, llm_seconds)
    bar.close()
    if counts["new"]:
        _log_cost(counts, time.monotonic() - start, llm_seconds)
    return counts


def _log_cost(counts: dict[str, int], elapsed: float, llm_seconds: float) -> None:
    new = counts["new"]
    logger.info(
        "%d answers in %.0f s: %.1f answers/min, %.2f s per answer (%.2f s in the LLM); "
        "kept %.0f%%; %s",
        new,
        elapsed,
        60 * new / max(elapsed, 1e-9),
        elapsed / new,
        llm_seconds / new,
        100 * counts["accepted"] / new,
        ", ".join(f"{k} {v}" for k, v in counts.items() if k not in ("new", "skipped")),
    )


def teacher_path(options: TeacherOptions) -> Path:
    value = options.teacher_gguf or os.environ.get(TEACHER_GGUF_ENV)
    if not value:
        raise CurpError(f"no teacher model: pass --teacher-gguf PATH or set ${TEACHER_GGUF_ENV}")
    path = Path(value)
    if not path.is_file():
        raise CurpError(f"teacher GGUF {path} not found; pass --teacher-gguf PATH to a GGUF file")
    return path


def run(options: TeacherOptions) -> dict[str, int]:
    """Load the teacher, plan the pairs and answer those not cached yet."""
    torch.set_num_threads(options.threads)
    backend = open_llamacpp_backend(
        model_path=str(teacher_path(options)),
        n_threads=options.threads,
        n_ctx=options.n_ctx,
        slots=1,
        workers=1,
    )
    encoder = SentenceEncoder()
    pairs, train_users = plan_pairs(options)
    teacher = Teacher(
        backend,
        encoder,
        wording=options.wording,
        max_new_tokens=options.max_new_tokens,
        panel=reference_panel(encoder, train_users, seed=options.seed),
        samples=options.samples,
        temperature=options.temperature,
        shown=options.shown,
    )
    cache = TeacherCache(options.cache or default_cache_path(options.cache_dir, teacher.teacher_id))
    check_cache_settings(cache, teacher.settings)
    logger.info("teacher %s, cache %s (%d records)", teacher.teacher_id, cache.path, len(cache))
    return generate(teacher, pairs, cache, limit=options.limit, progress=options.progress)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m curp_chain.training.teacher",
        description="Cache teacher answers to everyday requests, shaped by each user's history.",
    )
    for name, info in TeacherOptions.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = " ".join((info.description or "").split())
        if info.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = {k: v for k, v in vars(_parser().parse_args(argv)).items() if v is not None}
    try:
        options = TeacherOptions.model_validate(args)
        counts = run(options)
    except ValidationError as error:
        logger.error("%s", error)
        return 2
    except CurpError as error:
        logger.error("%s", error)
        return 1
    logger.info("done: %s", json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
