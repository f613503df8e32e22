"""Style personas: a user-consistent rewrite of a training user's tweets, as augmentation.

LaMP-7's users write far less formally than PAN 2019's: 22% of LaMP-7 gold tweets have no
capital letter and 16% write "i" for "I", against 4% and 0.5% of PAN training targets
(``benchmarks/style_signal.py`` and docs/experiments.md). A model trained on PAN alone
never sees a history whose style decides the target's. A persona is a small set of
surface rewrites (all lowercase, no final punctuation, no apostrophes, a trailing ellipsis,
exclamation marks) applied to *every* tweet of a user, history and target alike, while the
source to paraphrase stays neutral: the only way to write the target as the user does is
then to read the user's history. Each user keeps one persona (chosen by a hash of the user
id and the seed) in every example.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable

_FINAL_PUNCTUATION = re.compile(r"[.!?]+$")
_APOSTROPHE = re.compile(r"(?<=[^\W\d_])['’](?=(s|re|t|m|ll|ve|d)\b)", re.IGNORECASE)


def lowercase(text: str) -> str:
    return text.lower()


def no_final_punctuation(text: str) -> str:
    return _FINAL_PUNCTUATION.sub("", text.rstrip()).rstrip()


def no_apostrophes(text: str) -> str:
    return _APOSTROPHE.sub("", text)


def trailing_ellipsis(text: str) -> str:
    return no_final_punctuation(text) + "..."


def exclamations(text: str) -> str:
    return no_final_punctuation(text) + "!!"


REWRITES: dict[str, Callable[[str], str]] = {
    "lowercase": lowercase,
    "no final punctuation": no_final_punctuation,
    "no apostrophes": no_apostrophes,
    "trailing ellipsis": trailing_ellipsis,
    "exclamations": exclamations,
}
"""Every rewrite a persona can hold, applied in this order."""

_INCLUDE = {
    "lowercase": 0.5,
    "no final punctuation": 0.5,
    "no apostrophes": 0.3,
    "trailing ellipsis": 0.15,
    "exclamations": 0.15,
}
"""How often a persona holds each rewrite (the two line endings exclude each other)."""


def persona_of(user_id: str, fraction: float, seed: int) -> tuple[str, ...]:
    """The rewrites of ``user_id``'s persona: none for about 1 - ``fraction`` of users."""
    digest = hashlib.sha256(f"persona:{seed}:{user_id}".encode()).digest()
    rng = random.Random(digest)
    if rng.random() >= fraction:
        return ()
    chosen = [name for name, p in _INCLUDE.items() if rng.random() < p]
    if "trailing ellipsis" in chosen and "exclamations" in chosen:
        chosen.remove(rng.choice(["trailing ellipsis", "exclamations"]))
    if {"trailing ellipsis", "exclamations"} & set(chosen):
        chosen = [c for c in chosen if c != "no final punctuation"]
    return tuple(chosen) or ("lowercase",)


def apply_persona(text: str, persona: tuple[str, ...]) -> str:
    """``text`` rewritten by each of the persona's rewrites, in :data:`REWRITES` order."""
    for name, rewrite in REWRITES.items():
        if name in persona:
            text = rewrite(text)
    return text
