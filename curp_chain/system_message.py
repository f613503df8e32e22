"""The system message CurpChatModel sends when the caller sends none.

Without a system message of its own, SmolLM2-135M-Instruct's chat template inserts "You are
a helpful AI assistant named SmolLM, trained by Hugging Face", and the model then answers
everyday requests as a chatbot talking about itself ("I'm sorry for any confusion, but as a
chatbot designed to assist with digital services..."). A short system message that asks for
a direct answer removes most of those refusals, with and without soft tokens
(benchmarks/everyday_chat.py; numbers in docs/experiments.md, "Everyday chat").
"""

from __future__ import annotations

from collections.abc import Sequence

from curp_chain.prompt import ChatTurn

DEFAULT_SYSTEM_MESSAGE = "Reply to the message directly and briefly."
"""Sent first when the request has no system message (``CurpChatModel.default_system_message``)."""


def with_default_system(turns: Sequence[ChatTurn], system: str | None) -> list[ChatTurn]:
    """``turns`` led by ``system`` when they hold no system message and ``system`` is set;
    otherwise unchanged (a caller's own system message always wins)."""
    if system is None or any(turn.role == "system" for turn in turns):
        return list(turns)
    return [ChatTurn("system", system), *turns]
