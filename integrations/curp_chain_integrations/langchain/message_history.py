"""A user's CURP history as LangChain's ``BaseChatMessageHistory`` (a compatibility shim:
LangChain 1.x deprecates ``RunnableWithMessageHistory``; prefer ``remember_turns``).

Reading gives the user's stored items, oldest first: their own items as ``HumanMessage``,
stored replies (kind ``chat_reply``) as ``AIMessage``. Adding stores human messages (and AI
text replies) as history items, encoded at write time; other messages are not history and
are skipped. ``clear`` deletes the user and every item.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from curp_chain.chat.chat_model import CurpChatModel
from curp_chain.interfaces.history import NewHistoryItem
from curp_chain.personalization.memory import REPLY_KIND, USER_TURN_KIND


class CurpChatMessageHistory(BaseChatMessageHistory):
    """The history of ``user_id`` in ``model``'s store, as chat messages."""

    def __init__(self, model: CurpChatModel, user_id: str):
        self.model = model
        self.user_id = user_id

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        items = reversed(self.model.history(self.user_id))  # the store gives newest first
        return [
            AIMessage(item.text) if item.kind == REPLY_KIND else HumanMessage(item.text)
            for item in items
        ]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        items = []
        for message in messages:
            text = message.text if isinstance(message.content, list) else message.content
            if not isinstance(text, str) or not text.strip():
                continue
            if isinstance(message, HumanMessage):
                items.append(NewHistoryItem(text, kind=USER_TURN_KIND))
            elif isinstance(message, AIMessage) and not message.tool_calls:
                items.append(NewHistoryItem(text, kind=REPLY_KIND))
        if items:
            self.model.add_history(self.user_id, items, truncate=True)

    def clear(self) -> None:
        self.model.forget_user(self.user_id)
