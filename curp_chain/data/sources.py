"""The cache of neutral paraphrase sources, and the check that accepts an LLM's paraphrase.

The cache is a JSONL file, one line per tweet keyed by :func:`text_key`, appended as it
goes: an interrupted run resumes where it stopped, and rejected outputs are remembered
(with the reason) so they are not generated again. `curp train sources` writes it
(:mod:`curp_chain.training.sources`); the LaMP-7 task's training split reads it.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curp_chain.data.jsonl import read_jsonl
from curp_chain.data.refusal import refusal_reason
from curp_chain.data.users import text_key

_META = re.compile(
    r"^\s*(here('s| is)|sure|certainly|rewritten|paraphrase|tweet|the (tweet|user)|this tweet)\b",
    re.IGNORECASE,
)
_PREFIX = re.compile(
    r"^\s*(rewritten tweet|rewritten|paraphrased tweet|paraphrase|tweet)\s*:\s*", re.IGNORECASE
)
_ECHO = re.compile(r"^\s*(rewrite|paraphrase) (this|the following) tweet[^:]*:\s*", re.IGNORECASE)
_TOKEN = re.compile(r"[^\W_]+")
_STOP_WORDS = (
    "the a an and or but to of in on at for with is are was were be been it its this that "
    "i you he she we they me my your our their his her so just not no do does did have has "
    "had will would can could should im am as if then than there here what when how all"
)
_STOP = frozenset(_STOP_WORDS.split(" "))


_HANDLE = re.compile(r"[@#]\w+")
_QUOTED = re.compile(
    r"^\s*the (original |rewritten |paraphrased )?tweet (is|was|reads)\s*:?\s*\"([^\"]+)\"?",
    re.IGNORECASE,
)


def _content_words(text: str) -> set[str]:
    # Mentions and hashtags do not count: the model copies them into unrelated text. A crude
    # stem (the first 5 letters) lets "walking" match "walked".
    words = _TOKEN.findall(_HANDLE.sub(" ", text))
    return {w.lower()[:5] for w in words if len(w) > 2 and w.lower() not in _STOP}


def near_copy(text: str, tweet: str, threshold: float = 0.9) -> bool:
    """True when ``text`` has the tweet's words (mentions and hashtags aside) nearly
    unchanged: such a source teaches the model to copy its input."""
    ours = _TOKEN.findall(_HANDLE.sub(" ", text).lower())
    theirs = _TOKEN.findall(_HANDLE.sub(" ", tweet).lower())
    return difflib.SequenceMatcher(None, ours, theirs, autojunk=False).ratio() >= threshold


@dataclass(frozen=True)
class SourceCheck:
    source: str | None
    """The cleaned paraphrase, or None when rejected."""
    status: str
    """"ok", or why it was rejected: "empty", "refusal", "meta", "identical", "far",
    "length", "truncated"."""


def check_paraphrase(
    tweet: str, output: str, *, min_overlap: float = 0.3, truncated: bool = False
) -> SourceCheck:
    """Clean a generated paraphrase and decide whether it is a usable source.

    Rejects empty outputs, refusals, commentary about the tweet, copies of the tweet
    (ignoring case and punctuation), outputs far longer or shorter than the tweet, and
    outputs sharing fewer than ``min_overlap`` of the tweet's content words, and outputs cut
    off by the token limit (``truncated``).
    """
    text = _ECHO.sub("", output.strip())
    quoted = _QUOTED.match(text)
    if quoted:  # 'The original tweet was: "..."': keep what is quoted
        text = quoted.group(3)
    text = text.strip().splitlines()[0].strip() if text.strip() else ""
    text = _PREFIX.sub("", text).strip().strip('"').strip("“”").strip()
    if truncated:
        return SourceCheck(None, "truncated")
    if not text:
        return SourceCheck(None, "empty")
    if refusal_reason(text, paraphrase=True) and not refusal_reason(tweet, paraphrase=True):
        return SourceCheck(None, "refusal")
    if _META.match(text):
        return SourceCheck(None, "meta")
    if near_copy(text, tweet):
        return SourceCheck(None, "identical")
    ratio = len(text) / max(len(tweet), 1)
    if not 0.4 <= ratio <= 2.5:
        return SourceCheck(None, "length")
    words = _content_words(tweet)
    if words and len(words & _content_words(text)) / len(words) < min_overlap:
        return SourceCheck(None, "far")
    return SourceCheck(text, "ok")


_SLANG = {
    "u": "you",
    "ur": "your",
    "r": "are",
    "im": "I'm",
    "dont": "don't",
    "cant": "can't",
    "wont": "won't",
    "gonna": "going to",
    "wanna": "want to",
    "gotta": "have to",
    "lol": "",
    "lmao": "",
    "omg": "oh my god",
    "pls": "please",
    "plz": "please",
    "thx": "thanks",
    "tho": "though",
    "b4": "before",
    "2day": "today",
    "2morrow": "tomorrow",
    "ya": "you",
    "yeah": "yes",
    "idk": "I don't know",
    "tbh": "to be honest",
    "bc": "because",
}
_REPEAT = re.compile(r"([^\W\d_])\1{2,}")
_NON_TEXT = re.compile(r"[^\w\s@#'.,!?;:()\-&/]")


def cleanup_variant(tweet: str) -> str:
    """A deterministic clean-up of a tweet (slang expanded, emoji and stretched letters and
    hashtag signs removed, sentence case). For augmentation only: it is close to a copy."""
    text = _NON_TEXT.sub(" ", tweet)
    text = _REPEAT.sub(r"\1", text).replace("#", "")
    words = [_SLANG.get(w.lower(), w) for w in text.split()]
    text = " ".join(w for w in words if w)
    text = re.sub(r"\s+([.,!?;:])", r"\1", text).strip()
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    return text


class SourceCache:
    """A JSONL cache of paraphrase sources keyed by the tweet's :func:`text_key`."""

    def __init__(self, path: str | Path, *, max_lines: int | None = None):
        """Read the cache at ``path``; with ``max_lines``, only its first lines (the cache is
        append-only, so this reproduces the sources an earlier run saw)."""
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            # A run killed mid-write leaves a partial last line: skipped, so it is made again.
            for number, record in read_jsonl(self.path, skip_unreadable=True):
                if max_lines is not None and number > max_lines:
                    break
                self.records[record["key"]] = record

    def __contains__(self, tweet: str) -> bool:
        return text_key(tweet) in self.records

    def __len__(self) -> int:
        return len(self.records)

    def source(self, tweet: str) -> str | None:
        """The accepted source of ``tweet``, or None (not generated yet, or rejected)."""
        record = self.records.get(text_key(tweet))
        return None if record is None else record.get("source")

    def accepted(self) -> dict[str, str]:
        """tweet -> source for every record accepted by the current :func:`check_paraphrase`
        (raw outputs are re-checked, so a stricter check applies to old records too)."""
        accepted = {}
        for record in self.records.values():
            if record.get("status") == "truncated":
                continue
            check = check_paraphrase(record["tweet"], record.get("raw") or "")
            if check.source:
                accepted[record["tweet"]] = check.source
        return accepted

    def add(self, tweet: str, output: str, check: SourceCheck, generator: str) -> None:
        record: dict[str, Any] = {
            "key": text_key(tweet),
            "tweet": tweet,
            "source": check.source,
            "status": check.status,
            "raw": output,
            "generator": generator,
        }
        self.records[record["key"]] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
