"""Memory that learns: a user's completed turns appended to their history as they happen.

Off by default (``CurpChatModel(remember_turns=True)`` turns it on). The user's message is
stored on the model call that answers it (the last message of the request is the user's),
so an agent that calls the model again after a tool result does not store it twice. Items
are encoded and quantized at write time, so the user's next request already uses them.
"""

from __future__ import annotations

from curp_chain.interfaces.history import NewHistoryItem
from curp_chain.personalization.personalizer import Personalizer

USER_TURN_KIND = "chat"
REPLY_KIND = "chat_reply"


class TurnRecorder:
    """Per request: collects the reply text and stores the turn when the reply ends."""

    def __init__(self, personalizer: Personalizer, user_id: str, message: str, *, with_reply: bool):
        self.personalizer = personalizer
        self.user_id = user_id
        self.message = message
        self.with_reply = with_reply
        self.reply: list[str] = []

    def add(self, text: str) -> None:
        if self.with_reply:
            self.reply.append(text)

    def finish(self, *, made_call: bool) -> None:
        """Store the turn (the reply too, when asked and it is text, not a tool call)."""
        items = [NewHistoryItem(self.message, kind=USER_TURN_KIND)]
        reply = "".join(self.reply)
        if self.with_reply and not made_call and reply.strip():
            items.append(NewHistoryItem(reply, kind=REPLY_KIND))
        # Over-long turns keep their first part rather than failing a finished reply.
        self.personalizer.add_history(self.user_id, items, truncate=True)
