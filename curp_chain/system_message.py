"""The system message CurpChatModel sends when the caller sends none.

Without a system message of its own, SmolLM2-135M-Instruct's chat template inserts "You are
a helpful AI assistant named SmolLM, trained by Hugging Face", and the model then answers
everyday requests as a chatbot talking about itself ("I'm sorry for any misunderstanding, but
as a chatbot, I'm designed to assist with digital interactions"). On 50 everyday requests
(benchmarks/everyday_chat.py; docs/experiments.md, "everyday chat") a short system message
asking for a direct reply cut those refusals from 6 to 2 when there is no user.

It is not sent with soft tokens: the bundled checkpoint's were trained under their task's
own system message (rewriting tweets), and with this one they turned replies into runs of
@mentions and emoji (18 of 150 against 3) without fewer refusals (13 of 150 either way).
A checkpoint trained on chat requests may change that; set ``default_system_message`` to
None to never send it, or send your own system message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from curp_chain.prompt import ChatTurn

DEFAULT_SYSTEM_MESSAGE = "Reply to the message directly and briefly."
"""Sent first when a request has neither a system message nor soft tokens
(``CurpChatModel.default_system_message``)."""


def with_default_system(
    turns: Sequence[ChatTurn], system: str | None, soft: Any = None
) -> list[ChatTurn]:
    """``turns`` led by ``system`` when they hold no system message, ``system`` is set and
    the request has no soft tokens (``soft`` is None or empty); otherwise unchanged: a
    caller's own system message always wins."""
    personalized = soft is not None and len(soft) > 0
    if system is None or personalized or any(turn.role == "system" for turn in turns):
        return list(turns)
    return [ChatTurn("system", system), *turns]
