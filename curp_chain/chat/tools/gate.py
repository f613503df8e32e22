"""tool_choice "auto" on a small model: a relevance gate decides between a call and text.

SmolLM2-135M does not make this choice well itself: left to pick its first token, it never
starts a call (docs/benchmarks.md). The sentence encoder the model already loads for
personalization makes it instead. It embeds the latest user request and each bound tool
(its name, description and parameter names); when the best tool's cosine similarity
reaches the threshold, the reply is a call to that tool, decoded under its grammar (the
LLM still writes the arguments); otherwise the reply is text.

A tool already called since the latest user message is not offered again. An agent calls
the model again after each tool result with the same tools bound: that call then answers in
text instead of repeating the call forever.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from curp_chain.chat.tools.specs import ToolSpec
from curp_chain.runtime.prompt import ChatTurn

Encode = Callable[[Sequence[str]], torch.Tensor]
"""Texts -> (N, D) unit vectors (``SentenceEncoder.encode``)."""


@dataclass(frozen=True)
class GateDecision:
    """What "auto" became for one request."""

    call: str | None
    """The tool to call; None: reply in text."""
    scores: dict[str, float]
    """Cosine similarity of the request to each tool still on offer."""
    reason: str


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


def tool_scores(request: str, specs: Sequence[ToolSpec], encode: Encode) -> dict[str, float]:
    """Cosine similarity of ``request`` to each tool."""
    if not specs:
        return {}
    vectors = encode([request, *(tool_text(spec) for spec in specs)])  # (1 + T, D)
    similarity = vectors[1:] @ vectors[0]  # (T,): unit vectors, so cosines
    return {spec.name: float(s) for spec, s in zip(specs, similarity, strict=True)}


def decide(
    turns: Sequence[ChatTurn], specs: Sequence[ToolSpec], encode: Encode, threshold: float
) -> GateDecision:
    """A call to the best-matching tool not yet called for the latest request, if its
    similarity reaches ``threshold``; otherwise text."""
    request, called = latest_request(turns)
    offered = [spec for spec in specs if spec.name not in called]
    if not request.strip():
        return GateDecision(None, {}, "no user request to match")
    if not offered:
        return GateDecision(None, {}, "every tool was already called for this request")
    scores = tool_scores(request, offered, encode)
    best = max(scores, key=scores.__getitem__)
    if scores[best] < threshold:
        return GateDecision(None, scores, f"no tool reaches the threshold {threshold}")
    return GateDecision(best, scores, f"{best} reaches the threshold {threshold}")
