"""Which of the two jobs a personalized request asks for: an answer *to* the user (assist) or
a text *as* the user (write).

- **assist**: an everyday request ("What should I cook tonight?") gets an assistant's answer
  shaped by what the user's history says, from the assist checkpoint, under its system
  message.
- **write**: a request to write in the user's voice (a tweet, a Reddit reply, an email
  subject) gets the write checkpoint's soft tokens, which were trained to write what the
  user would write.

``mode="auto"`` (the default) tells them apart by the system message: a request whose system
message is one the write checkpoint was trained under (a write task's, or the checkpoint's
own ``chat_system_message``) is a write request; every other request, with no system message
or one of the caller's own, is an assist request. ``mode="write"`` and ``mode="assist"`` choose
outright, for a caller with a writing prompt of their own.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

from curp_chain.errors import CurpError
from curp_chain.runtime.prompt import ChatTurn

Mode = Literal["auto", "assist", "write"]
Route = Literal["assist", "write"]
MODES: tuple[str, ...] = ("auto", "assist", "write")


def write_system_messages(checkpoint_message: str | None) -> frozenset[str]:
    """The system messages of write requests: every bundled write task's and the write
    checkpoint's own."""
    from curp_chain.tasks import TASKS

    messages = {task.system for name, task in TASKS.items() if name != "assist"}
    if checkpoint_message:
        messages.add(checkpoint_message)
    return frozenset(" ".join(m.split()) for m in messages)


def route(turns: Sequence[ChatTurn], mode: str, write_messages: Collection[str]) -> Route:
    """ "assist" or "write" for a request of ``turns`` under ``mode``."""
    if mode not in MODES:
        raise CurpError(f"unknown mode {mode!r}; choose auto, assist or write")
    if mode != "auto":
        return "write" if mode == "write" else "assist"
    systems = (" ".join(t.content.split()) for t in turns if t.role == "system")
    return "write" if any(s in write_messages for s in systems) else "assist"
