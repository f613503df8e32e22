"""Users' texts for training: PAN 2019 users, the data and cache folders, user-level splits.

The data is read at run time from a data folder ($CURP_DATA_DIR, else ``../shared/data``
from the working directory); nothing is copied into the package.
"""

from __future__ import annotations

import hashlib
import html
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from curp_chain.data.jsonl import read_jsonl
from curp_chain.errors import CurpError

DATA_DIR_ENV = "CURP_DATA_DIR"
CACHE_DIR_ENV = "CURP_CACHE_DIR"

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_MENTION = re.compile(r"@\w+")
_SPACES = re.compile(r"[ \t\r\n]+")
_WORD = re.compile(r"[^\W_]{2,}")


def default_data_dir() -> Path:
    """$CURP_DATA_DIR, else ``../shared/data`` from the working directory (the repository
    root, where the shared data folder lies beside it)."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path("..") / "shared" / "data"


def default_cache_dir() -> Path:
    """Where training caches embeddings and paraphrase sources: $CURP_CACHE_DIR, else
    ``data-cache/`` in the working directory (git ignores it at the repository root)."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env) if env else Path("data-cache")


def text_key(text: str) -> str:
    """A stable 16-hex-digit key of a text, used by every cache."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def clean_tweet(text: str, *, min_words: int = 4) -> str | None:
    """The tweet with HTML entities decoded, URLs removed and spaces collapsed; None for a
    retweet, a tweet that is only links or mentions, or one with fewer than ``min_words``
    words besides mentions."""
    if text.lstrip().startswith("RT @"):
        return None
    text = _URL.sub(" ", html.unescape(text))
    text = _SPACES.sub(" ", text).strip()
    words = _WORD.findall(_MENTION.sub(" ", text))
    if len(words) < min_words:
        return None
    return text


@dataclass(frozen=True)
class UserTexts:
    """One user's usable items, in the order the data file lists them."""

    user_id: str
    corpus: str
    """"pan19" or "lamp7"."""
    texts: tuple[str, ...]


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise CurpError(
            f"{path} not found; pass --data-dir pointing at the shared data folder "
            f"(with pan19/ and lamp7/) or set ${DATA_DIR_ENV}"
        )
    return path


def load_pan(
    data_dir: str | Path | None = None, *, min_items: int = 8, max_users: int | None = None
) -> list[UserTexts]:
    """PAN 2019 human users with at least ``min_items`` cleaned, distinct tweets."""
    path = require_file(Path(data_dir or default_data_dir()) / "pan19" / "humans.jsonl")
    users = []
    for _, record in read_jsonl(path):
        texts = dict.fromkeys(t for t in map(clean_tweet, record["tweets"]) if t)
        if len(texts) >= min_items:
            users.append(UserTexts(f"pan19:{record['user_id']}", "pan19", tuple(texts)))
        if max_users is not None and len(users) >= max_users:
            break
    return users


def clean_profile(texts: Sequence[str]) -> tuple[str, ...]:
    """Profile items with whitespace collapsed, empty and repeated items dropped."""
    return tuple(dict.fromkeys(t for t in (_SPACES.sub(" ", x).strip() for x in texts) if t))


def is_held_out(user_id: str, fraction: float, seed: int) -> bool:
    """A user-level split decided by a hash of (seed, user id): stable when users are added."""
    digest = hashlib.sha256(f"{seed}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_users(
    users: Sequence[UserTexts], held_out_fraction: float, seed: int
) -> tuple[list[UserTexts], list[UserTexts]]:
    """(train, held-out) users; no user is in both."""
    if not 0.0 <= held_out_fraction < 1.0:
        raise CurpError(f"held-out fraction {held_out_fraction} must be in [0, 1)")
    train: list[UserTexts] = []
    held: list[UserTexts] = []
    for user in users:
        (held if is_held_out(user.user_id, held_out_fraction, seed) else train).append(user)
    return train, held


def user_order(users: Sequence[UserTexts], seed: int) -> list[UserTexts]:
    """Users in a seeded random order: the order sources are made in, so that the first N
    users of this order are the ones a partial run of `train sources` covered."""
    order = list(users)
    random.Random(seed).shuffle(order)
    return order


def target_order(
    users: Sequence[UserTexts],
    *,
    seed: int,
    min_words: int = 4,
    max_words: int = 40,
    per_user: int = 16,
) -> list[tuple[str, str]]:
    """(user id, tweet) pairs to use as targets, round-robin over users in
    :func:`user_order`: the first pass takes one tweet of every user, the next a second one,
    ... so any prefix covers as many users as it can. Short and over-long tweets are skipped."""
    rng = random.Random(seed + 1)
    pools = []
    for user in user_order(users, seed):
        eligible = [
            t
            for t in user.texts
            if min_words <= len(_WORD.findall(_MENTION.sub(" ", t))) <= max_words
        ]
        rng.shuffle(eligible)
        pools.append((user.user_id, eligible[:per_user]))
    order = []
    for round_index in range(per_user):
        for user_id, pool in pools:
            if round_index < len(pool):
                order.append((user_id, pool[round_index]))
    return order
