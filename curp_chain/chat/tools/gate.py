"""tool_choice "auto" on a small model: a relevance gate decides between a call and text.

SmolLM2-135M does not make this choice well itself: left to pick its first token, it never
starts a call (docs/benchmarks.md). The sentence encoder the model already loads for
personalization makes it instead. It embeds the latest user request and each bound tool
(its name, description and parameter names) and picks the tool that stands out most from
how that tool scores on everyday requests that need no tool. The reply is a call to it,
decoded under its grammar (the LLM still writes the arguments), when all four hold:

- its cosine similarity to the request reaches the threshold;
- it stands out from its everyday scores (a z-score against ``EVERYDAY_REQUESTS`` and the
  assist task's training requests, ``everyday_references``) by more than the best of as
  many unrelated tools would: the bar rises with the number of tools
  bound (``tool_count_bar``). With one fixed bar, each tool added is one more chance that
  an everyday request scores above it by accident: with 20 tools bound, 9 in 30 requests
  that need no tool were called (docs/benchmarks.md);
- it beats the best "no tool" alternative (``NO_TOOL_INTENTS``: small talk, writing,
  explanations, how-to, general knowledge) by ``NO_TOOL_MARGIN``;
- it is about as close to the request as the everyday references most like the request are
  (the mean similarity of its ``EVERYDAY_NEIGHBOURS`` nearest, less ``EVERYDAY_ALLOWANCE``).
  A request that reads like everyday requests that need no tool gets none, however well one
  of many tools scores: with 20 tools bound, "What's a good way to get my home ready for
  winter?" stood out enough for ``set_thermostat`` (0.37), but it is far closer to everyday
  requests about the home (0.50).

Otherwise the reply is text.

A tool already called since the latest user message is not offered again. An agent calls
the model again after each tool result with the same tools bound: that call then answers in
text instead of repeating the call forever.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import torch

from curp_chain.chat.tools.specs import ToolSpec
from curp_chain.runtime.prompt import ChatTurn
from curp_chain.tasks.assist import load_requests

Encode = Callable[[Sequence[str]], torch.Tensor]
"""Texts -> (N, D) unit vectors (``SentenceEncoder.encode``)."""

EVERYDAY_REQUESTS = (
    "Hi there!",
    "Hello, how are you?",
    "Thanks a lot!",
    "Bye for now.",
    "Good morning!",
    "What is your name?",
    "Do you like music?",
    "Can you keep a secret?",
    "I feel a bit sad today.",
    "Tell me a story about a dragon.",
    "Write a limerick about a dog.",
    "Compose a song about friendship.",
    "Write a short thank-you note.",
    "Can you help me write a cover letter?",
    "Rephrase this sentence more politely.",
    "Give me a riddle.",
    "Give me a motivational quote.",
    "What is the meaning of life?",
    "Explain how gravity works.",
    "How are rainbows formed?",
    "Why is the sky blue?",
    "What is a verb?",
    "Define the word 'serendipity'.",
    "How do you say thank you in Spanish?",
    "Who invented the telephone?",
    "What is the largest ocean?",
    "How many planets are in the solar system?",
    "Who was Napoleon?",
    "Tell me about ancient Rome.",
    "List three famous painters.",
    "What's the difference between a frog and a toad?",
    "Summarize the story of Snow White.",
    "Tell me something interesting.",
    "Give me advice on learning to code.",
    "What are the benefits of exercise?",
    "What is a healthy breakfast?",
    "How can I relax after work?",
    "What's a fun hobby to try?",
    "Suggest a movie for tonight.",
    "Recommend a podcast about history.",
)
"""Requests that need no tool, of every everyday kind: how a tool scores on these is its
baseline (some tools' descriptions are close to everything, others to nothing)."""

NO_TOOL_INTENTS = (
    "small talk: a greeting, thanks, goodbye, or a question about you",
    "creative writing: a poem, a story, a joke, a message or a letter",
    "explain why or how something is: science, history, language, meanings of words",
    "how to do something: instructions, a recipe, tips, advice or a recommendation",
    "general knowledge: a fact about people, places, books, art or animals",
)
"""The "no tool" alternatives a tool must beat: what a request that needs none asks for."""

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
"""Where ``request_parts`` splits a request into sentences."""

TOOL_Z = 2.0
"""How far (in standard deviations of its everyday scores) the chosen tool must stand out
with one tool bound; ``tool_count_bar`` raises it with more (docs/benchmarks.md)."""

NO_TOOL_MARGIN = 0.05
"""How much closer the request must be to the chosen tool than to every "no tool"
alternative (cosine similarity)."""

EVERYDAY_NEIGHBOURS = 10
"""How many of the everyday references nearest the request it is compared with (their mean
similarity to it); 0 turns the comparison off. A mean over several, so that no single
reference worded like the request decides alone."""

EVERYDAY_ALLOWANCE = 0.05
"""How far the chosen tool may score below the request's nearest everyday references. Two
requests are worded alike, a request and a tool's description are not: similarities between
requests run higher (those that need a tool sit 0.15 to 0.35 from their nearest everyday
references, and 0.2 to 0.65 from their tool)."""


@dataclass(frozen=True)
class GateDecision:
    """What "auto" became for one request."""

    call: str | None
    """The tool to call; None: reply in text."""
    scores: dict[str, float]
    """Cosine similarity of the request to each tool still on offer."""
    reason: str
    """Why, in words (reported in ``response_metadata["tool_gate"]``)."""


def tool_count_bar(n_tools: int) -> float:
    """The z-score the best of ``n_tools`` unrelated tools exceeds half the time (the median
    of the largest of n standard normal variables): 0 for one tool, 0.55 for two, 1.2 for
    five, 1.9 for twenty. Raising the bar by it keeps the chance of a call to an unrelated
    tool what it is with one tool bound."""
    return NormalDist().inv_cdf(0.5 ** (1 / n_tools)) if n_tools > 1 else 0.0


def everyday_references() -> list[str]:
    """The requests a tool's everyday scores are taken on: ``EVERYDAY_REQUESTS`` and the
    assist task's training requests (cooking, plans, trips, books, writing, ...)."""
    return [*EVERYDAY_REQUESTS, *(r.text for r in load_requests("train"))]


@functools.lru_cache(maxsize=8)
def _references(encode: Encode) -> tuple[torch.Tensor, torch.Tensor]:
    """(everyday requests, "no tool" intents) as vectors, encoded once per encoder."""
    everyday = everyday_references()
    vectors = encode([*everyday, *NO_TOOL_INTENTS])
    return vectors[: len(everyday)], vectors[len(everyday) :]


def tool_text(spec: ToolSpec) -> str:
    """What the encoder compares a request with: name, description, parameter names."""
    properties = spec.parameters.get("properties") or {}
    words = spec.name.replace("_", " ")
    return f"{words}: {spec.description} ({', '.join(properties)})"


def latest_request(turns: Sequence[ChatTurn]) -> tuple[str, set[str]]:
    """The latest user message, and the tools called after it."""
    called: set[str] = set()
    for turn in reversed(turns):
        if turn.role == "user":
            return turn.content, called
        called.update(call.name for call in turn.tool_calls)
    return "", called


def request_parts(request: str) -> list[str]:
    """The request, and each of its sentences when it has several: "What is the weather in
    Lyon? Then add a reminder for my plan." asks for two tools, and each sentence is closer
    to its tool than the whole request is."""
    sentences = [s for s in SENTENCE_END.split(request.strip()) if s]
    return [request, *sentences] if len(sentences) > 1 else [request]


@functools.lru_cache(maxsize=1024)
def _tool_vector(encode: Encode, text: str) -> torch.Tensor:
    return encode([text])[0]


def encode_with_tools(
    encode: Encode, texts: Sequence[str], specs: Sequence[ToolSpec]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(texts, tools) as vectors. A tool's vector is encoded once and kept (bounded): an
    agent binds the same tools to every call, and encoding 20 tool texts costs about as much
    as the rest of the gate."""
    tools = torch.stack([_tool_vector(encode, tool_text(spec)) for spec in specs])
    return encode(list(texts)), tools


def tool_scores(request: str, specs: Sequence[ToolSpec], encode: Encode) -> dict[str, float]:
    """Cosine similarity of ``request`` to each tool."""
    if not specs:
        return {}
    asked, tools = encode_with_tools(encode, [request], specs)
    similarity = tools @ asked[0]  # (T,): unit vectors, so cosines
    return {spec.name: float(s) for spec, s in zip(specs, similarity, strict=True)}


def standing(similarity: torch.Tensor, tools: torch.Tensor, everyday: torch.Tensor) -> torch.Tensor:
    """How far each tool's similarity to the request ((T,), or (P, T) for P parts of it)
    stands out from its similarities to the everyday requests, in their standard
    deviations (a z-score)."""
    baseline = tools @ everyday.T  # (T, E)
    return (similarity - baseline.mean(1)) / baseline.std(1).clamp_min(1e-6)


def everyday_likeness(asked: torch.Tensor, everyday: torch.Tensor) -> float:
    """The mean similarity of a request (a unit vector) to its ``EVERYDAY_NEIGHBOURS``
    nearest everyday references; -1 when the comparison is off."""
    neighbours = min(EVERYDAY_NEIGHBOURS, len(everyday))
    if not neighbours:
        return -1.0
    return float((everyday @ asked).topk(neighbours).values.mean())


def pick_forced_tool(
    turns: Sequence[ChatTurn], specs: Sequence[ToolSpec], encode: Encode
) -> GateDecision | None:
    """tool_choice "any" with several tools: a call to the one that stands out most for the
    latest request (``decide``'s ranking, without its bars: a call is required either way);
    None without a user request to rank them by. SmolLM2-135M, shown the tools, picks the
    right one of 20 far less often than this ranking does (docs/benchmarks.md)."""
    request, _ = latest_request(turns)
    if not request.strip() or not specs:
        return None
    asked, tools = encode_with_tools(encode, [request], specs)
    similarity = tools @ asked[0]
    z = standing(similarity, tools, _references(encode)[0])
    best = specs[int(z.argmax())].name
    scores = {spec.name: float(s) for spec, s in zip(specs, similarity, strict=True)}
    reason = f'tool_choice "any": {best} stands out most of {len(specs)} tools for the request'
    return GateDecision(best, scores, reason)


def _failed_test(
    best: str,
    score: float,
    *,
    threshold: float,
    stands_out: float,
    bar: float,
    tools: str,
    no_tool: float,
    likeness: float,
) -> str | None:
    """The first of the module docstring's tests that the best tool (its similarity
    ``score`` to the request) fails, in words; None when it passes them all. ``bar`` is the
    z-score to reach with ``tools`` bound ("5 tools")."""
    if score < threshold:
        return f"no tool reaches the threshold {threshold}"
    if stands_out < bar:
        return (
            f"{best} stands out from its everyday scores by {stands_out:.2f} standard "
            f"deviations, under the bar of {bar:.2f} for {tools}"
        )
    if score < no_tool + NO_TOOL_MARGIN:
        return (
            f"the request is about as close to a reply without tools ({no_tool:.3f}) as to "
            f"{best} ({score:.3f})"
        )
    if score < likeness - EVERYDAY_ALLOWANCE:
        return (
            f"the request reads like everyday requests that need no tool ({likeness:.3f}), "
            f"more than like {best} ({score:.3f})"
        )
    return None


def decide(
    turns: Sequence[ChatTurn],
    specs: Sequence[ToolSpec],
    encode: Encode,
    threshold: float,
    *,
    calibrated: bool = True,
) -> GateDecision:
    """A call to the tool (not yet called for the latest request) that stands out most from
    its everyday scores, when it passes the four tests of the module docstring; otherwise
    text. ``calibrated=False``: a call to the most similar tool when it reaches
    ``threshold``, whatever the number of tools."""
    request, called = latest_request(turns)
    offered = [spec for spec in specs if spec.name not in called]
    if not request.strip():
        return GateDecision(None, {}, "no user request to match")
    if not offered:
        return GateDecision(None, {}, "every tool was already called for this request")
    parts = request_parts(request)
    asked, tool_vectors = encode_with_tools(encode, parts, offered)  # (P, D), (T, D)
    by_part = asked @ tool_vectors.T  # (P, T): unit vectors, so cosines
    similarity = by_part.max(0).values  # (T,)
    scores = {spec.name: float(s) for spec, s in zip(offered, similarity, strict=True)}
    if not calibrated:
        best = max(scores, key=scores.__getitem__)
        if scores[best] < threshold:
            return GateDecision(None, scores, f"no tool reaches the threshold {threshold}")
        return GateDecision(best, scores, f"{best} reaches the threshold {threshold}")
    everyday, intents = _references(encode)
    z = standing(by_part, tool_vectors, everyday)  # (P, T)
    part, chosen = divmod(int(z.argmax()), len(offered))
    best, score, stands_out = (
        offered[chosen].name,
        float(by_part[part, chosen]),
        float(z[part, chosen]),
    )
    bar = TOOL_Z + tool_count_bar(len(offered))
    tools = f"{len(offered)} tool{'s' if len(offered) > 1 else ''}"
    failed = _failed_test(
        best,
        score,
        threshold=threshold,
        stands_out=stands_out,
        bar=bar,
        tools=tools,
        no_tool=float((intents @ asked[part]).max()),
        likeness=everyday_likeness(asked[part], everyday),
    )
    if failed:
        return GateDecision(None, scores, failed)
    reason = f"{best} reaches the threshold {threshold} and the bar of {bar:.2f} for {tools}"
    return GateDecision(best, scores, reason)
