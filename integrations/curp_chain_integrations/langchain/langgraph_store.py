"""LangGraph's long-term memory store (``BaseStore``) over a CurpChatModel's history store.

.. code-block:: python

    from langgraph.graph import StateGraph
    from curp_chain_integrations.langchain.langgraph_store import CurpStore

    store = CurpStore(model)                       # model: a CurpChatModel
    store.put(("alice", "memories"), "pets", {"text": "I have two cats"})
    graph = builder.compile(store=store)           # nodes reach it as runtime.store

What an agent puts in a user's namespace becomes one of that user's history items, encoded
and quantized at write time, so it shapes their next soft tokens; deleting it removes it
from the history. Conventions:

- The namespace label at ``user_position`` (default 0, the first) is the user id, under the
  project's user id policy: ``("alice", "memories")`` belongs to alice.
- The encoded text is the value's first non-empty string among ``text_fields`` (or the
  fields a put names in ``index=[...]``), else the value as compact JSON.
- Reads return only the items this store wrote (kind ``memory`` carrying the namespace and
  key), never the user's other history.
- Like LangGraph's own stores, a batch reads first and then writes, a later put of a key
  in the same batch winning; each user's writes in a batch are one transaction.
- Searches and namespace listings that do not name the user look at every user's items.

Needs ``pip install 'curp-chain-integrations[langgraph]'``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import torch
from langgraph.store.base import (
    NOT_PROVIDED,
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)
from pydantic import BaseModel, ConfigDict, Field

from curp_chain.errors import InvalidStoreOperationError
from curp_chain.interfaces.history import NewHistoryItem, validate_user_id
from curp_chain_integrations.langchain.store_items import (
    Memory,
    Namespace,
    check_value,
    latest,
    matches_filter,
    matches_namespace,
    new_item,
)

if TYPE_CHECKING:
    from curp_chain.chat.chat_model import CurpChatModel
    from curp_chain.personalization.personalizer import Personalizer

MemoriesByKey = dict[tuple[Namespace, str], list[Memory]]


class CurpStoreConfig(BaseModel):
    """Where the user id sits in a namespace, and how values become history items."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_position: int = Field(default=0, ge=0)
    """Index of the namespace label that is the user id."""
    kind: str = Field(default="memory", min_length=1, max_length=64)
    """History kind of the items the store writes; it reads back only items of this kind."""
    text_fields: tuple[str, ...] = ("text", "content")
    """Fields (LangGraph path syntax) whose strings are the encoded text of a value."""


class CurpStore(BaseStore):
    """A LangGraph ``BaseStore`` whose items are users' CURP history items."""

    def __init__(self, model: CurpChatModel, config: CurpStoreConfig | None = None) -> None:
        self.model = model
        self.config = config or CurpStoreConfig()

    @property
    def personalizer(self) -> Personalizer:
        return self.model.get_personalizer()

    # --- BaseStore -----------------------------------------------------------------------
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        results: list[Result] = [None] * len(ops)
        puts: dict[tuple[Namespace, str], PutOp] = {}
        cache: dict[str, MemoriesByKey] = {}
        for index, op in enumerate(ops):
            if isinstance(op, GetOp):
                results[index] = self._get(op, cache)
            elif isinstance(op, SearchOp):
                results[index] = self._search(op, cache)
            elif isinstance(op, ListNamespacesOp):
                results[index] = self._list_namespaces(op, cache)
            elif isinstance(op, PutOp):
                self._check_put(op)
                puts[(tuple(op.namespace), op.key)] = op
            else:
                raise InvalidStoreOperationError(f"unknown store operation {type(op).__name__}")
        self._write(list(puts.values()))
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        # The history store and the encoder are synchronous: keep them off the event loop.
        return await asyncio.to_thread(self.batch, list(ops))

    # --- reads -----------------------------------------------------------------------------
    def _get(self, op: GetOp, cache: dict[str, MemoriesByKey]) -> Item | None:
        user_id = self._user_of(op.namespace)
        found = self._memories(user_id, cache).get((tuple(op.namespace), op.key))
        return found[0].as_item() if found else None

    def _search(self, op: SearchOp, cache: dict[str, MemoriesByKey]) -> list[SearchItem]:
        prefix = tuple(op.namespace_prefix)
        candidates = [
            memory
            for user_id in self._users_under(prefix)
            for memory in self._current(user_id, cache)
            if memory.namespace[: len(prefix)] == prefix and matches_filter(memory.value, op.filter)
        ]
        candidates.sort(key=lambda m: (m.updated_at, m.item_id), reverse=True)
        if not op.query or not candidates:
            page = candidates[op.offset : op.offset + op.limit]
            return [memory.as_search_item() for memory in page]
        scores = self._similarity(op.query, [memory.text for memory in candidates])
        ranked = sorted(zip(scores, candidates, strict=True), key=lambda p: p[0], reverse=True)
        return [m.as_search_item(s) for s, m in ranked[op.offset : op.offset + op.limit]]

    def _list_namespaces(
        self, op: ListNamespacesOp, cache: dict[str, MemoriesByKey]
    ) -> list[Namespace]:
        conditions = op.match_conditions or ()
        position = self.config.user_position
        named = [
            tuple(c.path)[position]
            for c in conditions
            if c.match_type == "prefix" and len(c.path) > position and c.path[position] != "*"
        ]
        # A prefix that names the user reads only that user's items.
        users = [validate_user_id(named[0])] if named else self._all_users()
        namespaces = {key[0] for user_id in users for key in self._memories(user_id, cache)}
        kept = [ns for ns in namespaces if all(matches_namespace(ns, c) for c in conditions)]
        if op.max_depth is not None:
            kept = [ns[: op.max_depth] for ns in kept]
        return sorted(set(kept))[op.offset : op.offset + op.limit]

    def _similarity(self, query: str, texts: Sequence[str]) -> list[float]:
        """Cosine similarity of the query to each text, through the project's encoder."""
        vectors = self.personalizer.encoder.encode([query, *texts])  # (1 + N, D), unit length
        with torch.no_grad():
            return (vectors[1:] @ vectors[0]).tolist()

    # --- writes ----------------------------------------------------------------------------
    def _check_put(self, op: PutOp) -> None:
        """Everything a put can get wrong, checked before any user's writes start."""
        self._user_of(op.namespace)
        if op.value is not None:
            check_value(tuple(op.namespace), op.key, op.value)
        if op.ttl not in (NOT_PROVIDED, None):
            raise InvalidStoreOperationError(
                "this store keeps items until they are deleted; put them without a ttl"
            )

    def _write(self, puts: list[PutOp]) -> None:
        """Each user's puts and deletes as one `add_history` (or `delete_items`) call."""
        by_user: dict[str, list[PutOp]] = {}
        for op in puts:
            by_user.setdefault(self._user_of(op.namespace), []).append(op)
        for user_id, ops in by_user.items():
            existing = self._memories(user_id, {})  # fresh: the reads above may be stale
            replacing = [
                memory.item_id
                for op in ops
                for memory in existing.get((tuple(op.namespace), op.key), [])
            ]
            now = datetime.now(UTC)
            items = [
                self._new_item(op, op.value, existing, now) for op in ops if op.value is not None
            ]
            if items:
                self.personalizer.add_history(user_id, items, truncate=True, replacing=replacing)
            elif replacing:
                self.personalizer.store.delete_items(user_id, replacing)

    def _new_item(
        self, op: PutOp, value: Mapping[str, Any], existing: MemoriesByKey, now: datetime
    ) -> NewHistoryItem:
        namespace = tuple(op.namespace)
        previous = existing.get((namespace, op.key))
        fields = op.index if isinstance(op.index, list) and op.index else self.config.text_fields
        return new_item(
            namespace,
            op.key,
            value,
            kind=self.config.kind,
            fields=fields,
            now=now,
            created_at=previous[0].created_at if previous else None,
        )

    # --- users -----------------------------------------------------------------------------
    def _user_of(self, namespace: Sequence[str]) -> str:
        position = self.config.user_position
        if len(namespace) <= position:
            raise InvalidStoreOperationError(
                f"namespace {tuple(namespace)} has no label at position {position}, where "
                "this store reads the user id; put the user id there, e.g. "
                f"{('...',) * position + ('alice', 'memories')}"
            )
        return validate_user_id(namespace[position])

    def _users_under(self, prefix: Namespace) -> list[str]:
        """The users whose namespaces can start with ``prefix``."""
        if len(prefix) > self.config.user_position:
            return [self._user_of(prefix)]
        return self._all_users()

    def _all_users(self) -> list[str]:
        return [summary.user_id for summary in self.personalizer.store.list_users()]

    def _memories(self, user_id: str, cache: dict[str, MemoriesByKey]) -> MemoriesByKey:
        if user_id not in cache:
            items = self.personalizer.store.get_items(user_id, kind=self.config.kind)
            cache[user_id] = latest(items)
        return cache[user_id]

    def _current(self, user_id: str, cache: dict[str, MemoriesByKey]) -> list[Memory]:
        return [found[0] for found in self._memories(user_id, cache).values()]
