"""Judge-free personalization scores of everyday answers (`curp eval assist`).

An answer to "What should I cook tonight?" is personalized when it says something about *this*
user: it can be read off the reply which of the evaluated users asked. Each reply is scored
against every evaluated user's history:

- **top-1 (encoder)**: the user whose history centroid (all-MiniLM-L6-v2, mean of unit item
  vectors) is nearest the reply is the one who asked; chance is 1 / users;
- **top-1 (lexical)**: the same with TF-IDF word vectors (no encoder, so it cannot reward
  the project's own encoder);
- **gain**: cosine to the asker's centroid minus the mean cosine to the other users';
- **copy**: the reply repeats one of the asker's items (a run of more than 5 words, or a
  difflib ratio above 0.6, the teacher filter's thresholds);
- **on request**: cosine of the reply and the request: does it answer what was asked;
- **refusal**: the reply declines, disclaims, is empty, echoes the request, or repeats the
  line of words curp-words places before the request.

Intervals are normal 95% half-widths over replies; paired differences compare two methods
on the same (user, request) pairs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean, stdev
from typing import Any

import torch

from curp_chain.data.refusal import is_degenerate, is_refusal
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.model.item_words import WORDS_LEAD
from curp_chain.tasks.assist import AssistFilters, copy_scores, cut_item, words
from curp_chain.tasks.base import TaskExample

METRICS = ("top1", "top1_lexical", "gain", "copy", "on_request", "refusal")
"""The per-reply scores, each a number (booleans as 0/1)."""


@dataclass(frozen=True)
class ReplyScores:
    top1: float
    top1_lexical: float
    gain: float
    copy: float
    on_request: float
    refusal: float


def half_width(values: Sequence[float]) -> float:
    """Half-width of a normal 95% confidence interval of the mean."""
    return 1.96 * stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


class LexicalIndex:
    """TF-IDF (log-scaled term frequency, smoothed idf, unit length) over users' histories."""

    def __init__(self, documents: Mapping[str, str]):
        self.users = list(documents)
        counts = {u: Counter(words(text)) for u, text in documents.items()}
        frequency: Counter[str] = Counter()
        for bag in counts.values():
            frequency.update(bag.keys())
        total = len(counts)
        self.idf = {w: math.log((1 + total) / (1 + f)) + 1 for w, f in frequency.items()}
        self.vectors = {u: self.vector(bag) for u, bag in counts.items()}

    def vector(self, bag: Counter[str]) -> dict[str, float]:
        weights = {w: (1 + math.log(c)) * self.idf[w] for w, c in bag.items() if w in self.idf}
        norm = math.sqrt(sum(v * v for v in weights.values())) or 1.0
        return {w: v / norm for w, v in weights.items()}

    def nearest(self, text: str) -> str | None:
        """The user whose history is most similar to ``text``; None when no word is shared."""
        query = self.vector(Counter(words(text)))
        best, best_score = None, 0.0
        for user, vector in self.vectors.items():
            score = sum(weight * vector.get(word, 0.0) for word, weight in query.items())
            if score > best_score:
                best, best_score = user, score
        return best


def answers_nothing(reply: str, request: str) -> bool:
    """A refusal, a degenerate reply, or one that repeats the line of words curp-words puts
    before the request (curp_chain.model.item_words) instead of answering."""
    repeats_words = WORDS_LEAD.lower() in reply.lower()
    return is_refusal(reply) or is_degenerate(reply, request) or repeats_words


class AssistScorer:
    """Scores replies against the histories of the evaluated users."""

    def __init__(
        self,
        examples: Sequence[TaskExample],
        encoder: SentenceEncoder,
        filters: AssistFilters | None = None,
    ):
        self.encoder = encoder
        self.filters = filters or AssistFilters()
        self.items: dict[str, list[str]] = {}
        for example in examples:
            self.items.setdefault(example.user_id, [cut_item(p.text) for p in example.profile])
        self.users = list(self.items)
        centroids = [
            torch.nn.functional.normalize(encoder.encode(texts).mean(0), dim=-1)
            for texts in self.items.values()
        ]
        self.centroids = torch.stack(centroids)  # (U, D)
        self.lexical = LexicalIndex({u: " ".join(t) for u, t in self.items.items()})

    @property
    def chance(self) -> float:
        return 1 / len(self.users)

    def score(self, replies: Sequence[str], examples: Sequence[TaskExample]) -> list[ReplyScores]:
        """Scores of ``replies[i]``, the reply to ``examples[i]``."""
        vectors = self.encoder.encode([r or " " for r in replies])  # (N, D)
        requests = self.encoder.encode([e.input for e in examples])
        similarity = vectors @ self.centroids.T  # (N, U)
        scores = []
        for index, (reply, example) in enumerate(zip(replies, examples, strict=True)):
            own = self.users.index(example.user_id)
            row = similarity[index]
            others = torch.cat([row[:own], row[own + 1 :]])
            run, ratio = copy_scores(reply, self.items[example.user_id])
            scores.append(
                ReplyScores(
                    top1=float(int(row.argmax()) == own),
                    top1_lexical=float(self.lexical.nearest(reply) == example.user_id),
                    gain=float(row[own] - others.mean()) if len(others) else 0.0,
                    copy=float(
                        run > self.filters.max_copy_run or ratio > self.filters.max_copy_ratio
                    ),
                    on_request=float(vectors[index] @ requests[index]),
                    refusal=float(answers_nothing(reply, example.input)),
                )
            )
        return scores


def summary(scores: Sequence[ReplyScores]) -> dict[str, Any]:
    """Mean and 95% half-width of each metric, and n."""
    result: dict[str, Any] = {"n": len(scores)}
    for metric in METRICS:
        values = [getattr(s, metric) for s in scores]
        result[metric] = fmean(values) if values else None
        result[f"{metric}_ci"] = half_width(values) if values else None
    return result


def paired(
    ours: Sequence[ReplyScores], theirs: Sequence[ReplyScores], metric: str
) -> tuple[float, float]:
    """Mean and 95% half-width of ``ours - theirs`` on the same replies' pairs."""
    pairs = zip(ours, theirs, strict=True)
    differences = [getattr(a, metric) - getattr(b, metric) for a, b in pairs]
    return fmean(differences), half_width(differences)
