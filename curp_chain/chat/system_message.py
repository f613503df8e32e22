"""The system message CurpChatModel sends when the caller sends none.

Without a system message of its own, SmolLM2-135M-Instruct's chat template inserts "You are
a helpful AI assistant named SmolLM, trained by Hugging Face", and the model then answers
everyday requests as a chatbot talking about itself ("I'm sorry for any misunderstanding, but
as a chatbot, I'm designed to assist with digital interactions"). On 50 everyday requests
(benchmarks/everyday_chat.py; docs/experiments.md, "everyday chat") a short system message
asking for a direct reply cut those refusals from 6 to 2 when there is no user.

A personalized request needs a system message its soft tokens were trained under: with an
unseen one they refuse more ("I'm sorry for your loss, but as a language AI...") or turn
into echoes and runs of @mentions. So it gets its checkpoint's own
(``CurpConfig.chat_system_message``); one that names none (the LaMP-7 checkpoint) gets none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from curp_chain.runtime.prompt import ChatTurn

DEFAULT_SYSTEM_MESSAGE = "Reply to the message directly and briefly."
"""Sent first when a request has neither a system message nor soft tokens
(``CurpChatModel.default_system_message``)."""


def with_default_system(
    turns: Sequence[ChatTurn],
    system: str | None,
    soft: Any = None,
    personalized_system: str | None = None,
) -> list[ChatTurn]:
    """``turns`` led by a system message when they hold none: ``personalized_system`` when
    the request has soft tokens (``soft`` neither None nor empty), else ``system``; nothing
    when that one is None. A caller's own system message always wins."""
    personalized = soft is not None and len(soft) > 0
    chosen = personalized_system if personalized else system
    if chosen is None or any(turn.role == "system" for turn in turns):
        return list(turns)
    return [ChatTurn("system", chosen), *turns]
