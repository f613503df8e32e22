"""The refusal detector: did the model decline instead of answering (or rewriting)?

Used by ``benchmarks/everyday_chat.py`` to count refusals on everyday requests (plans,
advice, cooking, small talk, short writing), none of which calls for an apology, a
condolence or a statement about what the model is. On such requests a small chat model
refuses in a few recognisable ways, all seen in SmolLM2-135M-Instruct's replies:

- it disclaims being a machine: "As a chatbot, I'm designed to assist with...",
  "As an AI, I don't have weekends";
- it says it cannot: "I can't provide recommendations", "I don't have personal
  experiences", "I'm not able to browse";
- it opens with an apology: "I'm sorry for any confusion, but...", "I apologize...",
  or a misplaced condolence ("I'm sorry for your loss") in place of an answer. Sympathy
  ("I'm so sorry to hear that you're feeling unmotivated. It's normal...") is not an
  apology for not answering and does not count.

A reply is a refusal when any of these patterns matches (case-insensitive): disclaimers and
"cannot" statements anywhere in the reply, apologies only at its start (the first sentence).
"I can't wait" or "don't forget" do not count: a "cannot" statement needs a verb of helping
or an object such as personal experiences after it. The detector errs toward counting: an
honest "I don't have personal preferences, but here is one..." is a refusal here too, since
the reply still declines the request as asked.

Paraphrases (``paraphrase=True``, used by :func:`curp_chain.data.sources.check_paraphrase`
on LLM rewrites of tweets) are judged by what a rewrite has no reason to add: besides the
disclaimers and "cannot" statements above, an apology anywhere ("I'm sorry", including "I'm
sorry to hear"; "I apologize"), any "cannot" ("I can't", "I cannot", "I'm unable", "I'm not
able", whatever follows), "as an AI" or "language model" anywhere, and calling the text
"inappropriate" or "offensive" (kind "objection"). An opening "Unfortunately" or "Sorry" is
not counted there: in a rewritten complaint it is as often the tweet's own word. The caller
compares with the tweet, since a tweet may say any of these itself.

A reply can also fail without refusing: :func:`is_degenerate` flags replies that answer
nothing (empty, the request echoed whole or in part, or mostly @mentions, hashtags and
emoji).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SELF = r"(?:a|an)\s+(?:ai|a\.i\.|chatbot|chat\s*bot|bot|language\s+model|llm|virtual\s+assistant|digital\s+assistant|ai\s+assistant|ai\s+language\s+model|text-based\s+\w+|computer\s+program|machine)"  # noqa: E501

_DISCLAIMER = re.compile(
    rf"\b(?:as\s+{_SELF}|i(?:'m|’m|\s+am)\s+(?:just\s+|only\s+|not\s+)?{_SELF}"
    r"|i\s+was\s+(?:designed|programmed|trained)\s+to|i(?:'m|’m|\s+am)\s+(?:designed|programmed)\s+to)\b",
    re.IGNORECASE,
)

_CANNOT = re.compile(
    r"\bi\s*(?:cannot|can\s*not|can['’]?t|am\s+unable\s+to|['’]m\s+unable\s+to|am\s+not\s+able\s+to"
    r"|['’]m\s+not\s+able\s+to|am\s+not\s+capable\s+of|['’]m\s+not\s+capable\s+of|won['’]?t\s+be\s+able\s+to"
    r"|am\s+not\s+equipped\s+to|['’]m\s+not\s+equipped\s+to"
    r"|do\s+not\s+have\s+the\s+ability\s+to|don['’]?t\s+have\s+the\s+ability\s+to)\s+"
    r"(?:\w+\s+)?(?:help|assist|provide|answer|do\s+that|fulfil|fulfill|comply|browse|access"
    r"|recommend|suggest|give\s+(?:you|advice|personal|recommendations|opinions)|share|generate"
    r"|offer|predict|experience|eat|taste|engage|perform|physically|personally)\b",
    re.IGNORECASE,
)

_NO_SELF = re.compile(
    r"\bi\s*(?:do\s+not|don['’]?t|doesn['’]?t)\s+have\s+(?:any\s+)?(?:personal|the\s+ability"
    r"|access|real-time|feelings|emotions|opinions|preferences|a\s+physical|a\s+body|physical"
    r"|experiences|personal\s+experiences|the\s+capability|the\s+capacity|weekends|a\s+weekend"
    r"|hobbies|friends|a\s+family|taste|a\s+sense)",
    re.IGNORECASE,
)

# Paraphrase mode only: phrases that mark a rewrite as the model talking, wherever they are.
_ANY_APOLOGY = re.compile(r"\bi(?:['’]?m|\s+am)\s+sorry\b|\bi\s+apologi[sz]e\b", re.IGNORECASE)
_ANY_CANNOT = re.compile(
    r"\bi\s+(?:can['’]?t|cannot)\b|\bi(?:['’]m|\s+am)\s+(?:unable|not\s+able)\b", re.IGNORECASE
)
_ANY_DISCLAIMER = re.compile(r"\bas\s+an\s+ai\b|\blanguage\s+model\b", re.IGNORECASE)
_OBJECTION = re.compile(r"\b(?:inappropriate|offensive)\b", re.IGNORECASE)

_APOLOGY_START = re.compile(
    r"^\W*(?:(?:i(?:'m|’m|\s+am)\s+(?:so\s+|very\s+|truly\s+|really\s+)?)?sorry\b(?!\s+to\s+hear)"
    r"|i\s+apologi[sz]e"
    r"|my\s+apologies|unfortunately\b|i\s+regret)",
    re.IGNORECASE,
)


def refusal_reason(reply: str, *, paraphrase: bool = False) -> str | None:
    """Which kind of refusal ``reply`` is ("disclaimer", "cannot", "apology", and with
    ``paraphrase`` also "objection"), or None. ``paraphrase`` judges an LLM's rewrite of a
    text instead of a reply (see the module doc)."""
    text = " ".join(reply.split())
    if _DISCLAIMER.search(text) or (paraphrase and _ANY_DISCLAIMER.search(text)):
        return "disclaimer"
    if _CANNOT.search(text) or _NO_SELF.search(text) or (paraphrase and _ANY_CANNOT.search(text)):
        return "cannot"
    if _ANY_APOLOGY.search(text) if paraphrase else _APOLOGY_START.search(text):
        return "apology"
    if paraphrase and _OBJECTION.search(text):
        return "objection"
    return None


def is_refusal(reply: str) -> bool:
    """True when ``reply`` declines the request instead of answering it (see module doc)."""
    return refusal_reason(reply) is not None


def refusal_rate(replies: Iterable[str]) -> float:
    """The fraction of ``replies`` that are refusals (0.0 for no replies)."""
    flags = [is_refusal(r) for r in replies]
    return sum(flags) / len(flags) if flags else 0.0


_NOISE = re.compile(r"[@#]\S+|[\U0001f300-\U0001faff\u2600-\u27bf\U0001f000-\U0001f2ff\ufe0f]")


_WORD = re.compile(r"[\w']+")


def _echoes(reply: str, request: str) -> bool:
    """A short reply made of the request's own words: "Sleep better." for "How can I sleep
    better?", "i did this weekend" for "What did you do this weekend?" (at most 8 words, at
    most one of them not in the request)."""
    words = _WORD.findall(reply.lower())
    asked = set(_WORD.findall(request.lower()))
    return len(words) <= 8 and sum(word not in asked for word in words) <= 1


def is_degenerate(reply: str, request: str) -> bool:
    """True when ``reply`` answers nothing: empty, the request echoed back whole or in part
    (:func:`_echoes`), or mostly @mentions, #hashtags and emoji (over a third of its
    characters), which a tweet-trained soft prompt can push a small model into
    ("@french_lady @french_babylonian ...")."""
    text = " ".join(reply.split())
    if not text or _echoes(text, request):
        return True
    noise = sum(len(m) for m in _NOISE.findall(text))
    return noise > len(text.replace(" ", "")) / 3
