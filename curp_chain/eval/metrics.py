"""Quality metrics as LaMP reports them (ROUGE-1 and ROUGE-L F1, stemmed) and the one
clean-up every method's reply goes through before it is scored."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, NamedTuple

from curp_chain.errors import MissingDependencyError

EVAL_INSTALL = "pip install 'curp-chain[eval]'"


class RougeScores(NamedTuple):
    rouge1: float
    rougeL: float


@lru_cache(maxsize=1)
def _scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise MissingDependencyError(f"ROUGE needs rouge-score; run: {EVAL_INSTALL}") from None
    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def rouge(prediction: str, reference: str) -> RougeScores:
    """ROUGE-1 and ROUGE-L F-measures of one prediction against one reference.

    rouge-score's tokenizer lowercases, keeps only letters and digits, and Porter-stems
    words longer than three characters.
    """
    scores = _scorer().score(reference, prediction)
    return RougeScores(scores["rouge1"].fmeasure, scores["rougeL"].fmeasure)


# A label that talks about the paraphrase: "Here is the paraphrased tweet:", "Sure! Here's a
# rewrite:", "Paraphrase:", "The user's tweet:". A colon inside a URL is not a label's, and a
# tweet may well start with "Here is my pick:", so the label must name the paraphrase.
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly|of course)[!,.]?\s*)?"
    r"[^:\n]{0,60}?\b(?:paraphras\w*|rewrit\w*|rephras\w*|reword\w*|tweets?|version)\b"
    r"[^:\n]{0,40}:(?=\s|$)\s*",
    re.IGNORECASE,
)
_QUOTES = [('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("`", "`")]


def _strip_quotes(text: str) -> str:
    text = text.strip()
    for left, right in _QUOTES:
        if len(text) >= 2 and text.startswith(left) and text.endswith(right):
            return text[len(left) : -len(right)].strip()
    return text


def clean_reply(text: str, *, label: str | None = None, whole: bool = False) -> str:
    """The reply as scored: preambles ("Here is the paraphrase:") removed, the first
    non-empty line kept (every line with ``whole``), surrounding quotes stripped. Applied to
    every method alike.

    ``label`` is a regular expression for a label the task's replies may open with
    ("Subject:" before a subject line); it is removed with its colon, case ignored.
    """
    text = _PREAMBLE.sub("", text.strip(), count=1)
    if label:
        text = re.sub(rf"^\s*(?:{label})\s*:\s*", "", text, count=1, flags=re.IGNORECASE)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kept = " ".join(lines) if whole else next(iter(lines), "")
    return _strip_quotes(kept)


def normalized(text: str) -> str:
    """Lowercased words only: what "the reply copies its input" is judged on."""
    return " ".join(re.findall(r"\w+", text.lower()))
