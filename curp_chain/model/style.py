"""Style features of a history item: how it is written rather than what it says.

The sentence encoder is blind to much of what makes a user's writing theirs: all-MiniLM-L6-v2
lowercases its input and maps emoji to one unknown token, so its vectors describe topics.
On LaMP-7, how a user's earlier tweets are cased and punctuated predicts the same traits of
the tweet to write (correlation 0.5 to 0.8 for casing, 0.4 to 0.5 for end punctuation,
exclamation marks and ellipses), while the request, an LLM's neutral paraphrase, holds none
of it. These features are appended to the encoder vector and quantized as one more codebook
subspace, so an item is still stored as a few small integers.

Every feature lies in [0, 1]. Changing them changes the codes: bump :data:`STYLE_VERSION`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

STYLE_VERSION = "style-v1"
"""Names this feature set; cached codes and embeddings record it."""

STYLE_FEATURES = (
    "first letter lowercase",
    "no uppercase letter",
    "uppercase share of letters",
    "all-caps word share",
    "lowercase pronoun i",
    "ends with .",
    "ends with !",
    "ends with ?",
    "ends without punctuation",
    "words / 30",
    "mean word length / 10",
    "exclamation marks / 3",
    "repeated ! or ?",
    "ellipsis",
    "commas per word x 3",
    "contraction without apostrophe",
    "contraction with apostrophe",
    "starts with @mention",
    "mentions / 3",
    "hashtags / 3",
    "emoticon or <3",
    "emoji",
    "laughter (lol, haha, ...)",
    "stretched word or text speak",
)
STYLE_DIM = len(STYLE_FEATURES)

STYLE_SCALE = 0.25
"""Style vectors are scaled so that their norm is of the order of an encoder subspace's,
keeping both on a similar footing in the aggregator's input layer."""

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_MENTION = re.compile(r"@\w+")
_HASHTAG = re.compile(r"#\w+")
_BARE_CONTRACTION = re.compile(
    r"\b(dont|cant|wont|didnt|doesnt|isnt|arent|wasnt|im|ive|youre|theyre|thats|whats|"
    r"couldnt|shouldnt|wouldnt|hes|shes|lets)\b"
)
_APOSTROPHE_CONTRACTION = re.compile(r"[^\W\d_]['’](s|re|t|m|ll|ve|d)\b", re.IGNORECASE)
_EMOTICON = re.compile(r"(?:^|\s)(?:[:;=8xX]-?[()DPpOo3/\\|\]\[]|<3|\^_?\^|[xX]D)(?=\s|$|[.!?,])")
_EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf\U0001f000-\U0001f2ff]")
_LAUGHTER = re.compile(r"\b(lol+|lmao+|rofl|haha\w*|hehe\w*|ha ha)\b", re.IGNORECASE)
_STRETCHED = re.compile(r"([^\W\d_])\1\1")
_TEXT_SPEAK = re.compile(r"\b(u|ur|r|b4|2day|2nite|pls|plz|thx|gonna|wanna|gotta|ya|omg|idk)\b")


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def style_features(text: str) -> list[float]:
    """The :data:`STYLE_FEATURES` of one text, each in [0, 1]."""
    stripped = text.strip()
    # Casing is read without mentions: "@Bob" says nothing of how the user writes.
    letters = [c for c in _MENTION.sub(" ", stripped) if c.isalpha()]
    upper = sum(c.isupper() for c in letters)
    words = _WORD.findall(_MENTION.sub(" ", _HASHTAG.sub(" ", stripped)))
    caps_words = sum(len(w) > 1 and w.isupper() for w in words)
    last = stripped[-1:] if stripped else ""
    lowered = stripped.lower()
    return [
        float(bool(letters) and letters[0].islower()),
        float(bool(letters) and upper == 0),
        upper / len(letters) if letters else 0.0,
        caps_words / len(words) if words else 0.0,
        float(re.search(r"(?:^|\s)i(?:\s|$|')", stripped) is not None),
        float(last == "." and not stripped.endswith("..")),
        float(last == "!"),
        float(last == "?"),
        float(last.isalnum()),
        _clip(len(words) / 30),
        _clip(sum(map(len, words)) / len(words) / 10) if words else 0.0,
        _clip(stripped.count("!") / 3),
        float("!!" in stripped or "??" in stripped or "?!" in stripped),
        float(".." in stripped or "…" in stripped),
        _clip(3 * stripped.count(",") / len(words)) if words else 0.0,
        float(_BARE_CONTRACTION.search(lowered) is not None),
        float(_APOSTROPHE_CONTRACTION.search(stripped) is not None),
        float(stripped.startswith("@")),
        _clip(len(_MENTION.findall(stripped)) / 3),
        _clip(len(_HASHTAG.findall(stripped)) / 3),
        float(_EMOTICON.search(stripped) is not None),
        float(_EMOJI.search(stripped) is not None),
        float(_LAUGHTER.search(stripped) is not None),
        float(_STRETCHED.search(lowered) is not None or _TEXT_SPEAK.search(lowered) is not None),
    ]


def style_vectors(texts: Sequence[str]) -> Tensor:
    """(len(texts), STYLE_DIM) scaled style features."""
    if not texts:
        return torch.zeros(0, STYLE_DIM)
    return torch.tensor([style_features(t) for t in texts], dtype=torch.float32) * STYLE_SCALE


def with_style(vectors: Tensor, texts: Sequence[str], style_dim: int) -> Tensor:
    """Encoder vectors (N, D) of ``texts`` followed by their style features when the model
    uses them (``style_dim`` = :data:`STYLE_DIM`); unchanged when ``style_dim`` is 0."""
    if not style_dim:
        return vectors
    if style_dim != STYLE_DIM:
        raise ValueError(f"style_dim={style_dim}; this curp-chain computes {STYLE_DIM} features")
    if len(texts) != len(vectors):
        raise ValueError(f"{len(texts)} texts for {len(vectors)} vectors")
    return torch.cat([vectors, style_vectors(texts).to(vectors.device, vectors.dtype)], dim=-1)
