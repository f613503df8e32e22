"""History in, soft tokens out: the encoder, the CURP user model and a history store together.

This is the part of curp-chain that knows nothing about LangChain or about the LLM
backend; CurpChatModel, the CLI and the evaluation harness all use it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from curp_chain.errors import CheckpointError, CurpError
from curp_chain.interfaces.history import (
    HistoryItem,
    ItemCodes,
    NewHistoryItem,
    normalize_items,
    validate_user_id,
)
from curp_chain.interfaces.protocols import HistoryStore, SoftVectors
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.model.folded import FoldedUserModel
from curp_chain.model.item_words import ItemWordDecoder, with_words
from curp_chain.model.user_model import CurpUserModel
from curp_chain.runtime.prompt import ChatTurn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Personalization:
    """The soft tokens for one request, and what made them (for response_metadata)."""

    soft: SoftVectors | None
    user_id: str | None
    history_items: int = 0
    prototypes: list[dict[str, int]] = field(default_factory=list)
    reason: str | None = None
    """Why the reply is not personalized (no user, no history), else None."""
    words: tuple[str, ...] = ()
    """Words read off the codes of the user's items nearest the request, placed before it
    (only with an item-word decoder: curp_chain.model.item_words)."""

    @property
    def personalized(self) -> bool:
        return self.soft is not None


def top_prototypes(codes: Sequence[Sequence[int]], limit: int = 8) -> list[dict[str, int]]:
    """The (subspace, prototype) pairs most used across a user's items, most used first."""
    counts = Counter((m, int(k)) for row in codes for m, k in enumerate(row))
    return [{"subspace": m, "prototype": k, "items": n} for (m, k), n in counts.most_common(limit)]


def with_request_words(turns: Sequence[ChatTurn], words: Sequence[str]) -> list[ChatTurn]:
    """``turns`` with ``words`` before the request in the last user turn (unchanged when
    there are none)."""
    last_user = max((i for i, t in enumerate(turns) if t.role == "user"), default=None)
    if not words or last_user is None:
        return list(turns)
    told = ChatTurn("user", with_words(turns[last_user].content, words))
    return [*turns[:last_user], told, *turns[last_user + 1 :]]


def check_soft_tokens(soft: SoftVectors) -> SoftVectors:
    """The soft tokens, or CheckpointError if any is NaN or infinite: the LLM would answer
    with an empty or garbage reply that still looks personalized."""
    if not np.isfinite(soft).all():
        raise CheckpointError(
            "the CURP model produced NaN or infinite soft tokens; its checkpoint is damaged"
        )
    return soft


class Personalizer:
    """Encodes history at write time and turns a user's cached codes into soft tokens."""

    def __init__(
        self,
        user_model: CurpUserModel,
        encoder: SentenceEncoder,
        store: HistoryStore | None = None,
        item_words: ItemWordDecoder | None = None,
    ):
        self.user_model = user_model.eval()
        self.item_words = item_words
        # The per-request path: the same function as user_model, without its overhead.
        self.folded = FoldedUserModel(self.user_model)
        self.encoder = encoder
        self._store = store
        self.codebook_version = user_model.quantizer.version(user_model.config.item_encoder_id)

    @property
    def store(self) -> HistoryStore:
        if self._store is None:
            raise CurpError("this Personalizer has no history store; pass one to store histories")
        return self._store

    @torch.inference_mode()
    def encode_codes(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """(N, M) int codes of texts, through the frozen encoder and the codebook."""
        vectors = self.item_vectors(texts, progress=progress)
        return self.user_model.quantizer.encode(vectors).numpy().astype(np.int64)

    def item_vectors(self, texts: Sequence[str], *, progress: bool = False) -> torch.Tensor:
        """(N, D) vectors of texts as the codebook sees them (encoder vector + style)."""
        encoded = self.encoder.encode(texts, progress=progress)
        return self.user_model.item_vectors(encoded, texts)

    def add_history(
        self,
        user_id: str,
        items: Iterable[str | NewHistoryItem],
        *,
        truncate: bool = False,
        progress: bool = False,
        replacing: Sequence[int] = (),
    ) -> list[HistoryItem]:
        """Validate, encode once and store items with their codes, all or nothing; the
        user's items with ids in ``replacing`` are deleted in the same transaction."""
        user_id = validate_user_id(user_id)
        batch = normalize_items(items, truncate=truncate)
        codes = self.encode_codes([item.text for item in batch], progress=progress)
        if not replacing:  # the plain call, which every HistoryStore has always taken
            return self.store.add_items(user_id, batch, codes.tolist(), self.codebook_version)
        return self.store.add_items(
            user_id, batch, codes.tolist(), self.codebook_version, replacing=replacing
        )

    def user_codes(self, user_id: str, limit: int | None = None) -> list[ItemCodes]:
        """The newest ``limit`` items' codes (the checkpoint's ``max_history_items`` when
        None), encoding (once) any made with an older codebook."""
        limit = limit or self.user_model.config.max_history_items
        cached = self.store.get_codes(user_id, self.codebook_version, limit=limit)
        encoded = list(cached.encoded)
        if cached.stale:
            logger.info("re-encoding %d items of %s for a new codebook", len(cached.stale), user_id)
            fresh = self.encode_codes([item.text for item in cached.stale])
            mapping = {item.id: row.tolist() for item, row in zip(cached.stale, fresh, strict=True)}
            saved = self.store.save_codes(mapping, self.codebook_version)
            # Items deleted meanwhile (one by one, or with their user) are left out.
            encoded += [ItemCodes(i, tuple(c)) for i, c in mapping.items() if i in saved]
        return encoded

    def soft_tokens_from_codes(
        self, codes: Sequence[Sequence[int]], query: str, *, use_query_token: bool = True
    ) -> SoftVectors:
        """Soft tokens (T, H) from item codes (N, M) and the current query."""
        needs_query = self.user_model.config.query_aware and use_query_token
        query_vector = self.item_vectors([query])[0] if needs_query else None
        return self.soft_tokens_for(codes, query_vector, use_query_token=use_query_token)

    def soft_tokens_for(
        self,
        codes: Sequence[Sequence[int]],
        query_vector: torch.Tensor | None,
        *,
        use_query_token: bool = True,
    ) -> SoftVectors:
        """:meth:`soft_tokens_from_codes` with the query already made an item vector."""
        codes_tensor = torch.as_tensor(np.asarray(codes, dtype=np.int64))  # (N, M)
        soft = self.folded.soft_tokens(codes_tensor, query_vector, use_query_token=use_query_token)
        return check_soft_tokens(soft.numpy())

    def words_from_codes(
        self, decoder: ItemWordDecoder, codes: Sequence[Sequence[int]], query: str
    ) -> list[str]:
        """The words ``decoder`` reads off the codes (N, M) of the items nearest ``query``."""
        return self.words_for(decoder, codes, self.item_vectors([query])[0]) if codes else []

    @torch.inference_mode()
    def words_for(
        self, decoder: ItemWordDecoder, codes: Sequence[Sequence[int]], query_vector: torch.Tensor
    ) -> list[str]:
        """:meth:`words_from_codes` with the query already made an item vector (its first
        ``encoder_dim`` values are the encoder's, which the items are compared with)."""
        if not codes:
            return []
        codes_tensor = torch.as_tensor(np.asarray(codes, dtype=np.int64))
        return decoder.words_for(self.user_model.quantizer.decode(codes_tensor), query_vector)

    def personalize(self, user_id: str | None, query: str) -> Personalization:
        """Soft tokens for ``user_id`` answering ``query``; none (with a reason) when the
        user is unknown or has no history."""
        if user_id is None:
            return Personalization(None, None, reason="no user_id given")
        user_id = validate_user_id(user_id)
        limit = self.user_model.config.max_history_items
        words_limit = self.item_words.config.max_items if self.item_words else 0
        items = self.user_codes(user_id, max(limit, words_limit))
        if not items:
            return Personalization(None, user_id, reason="user has no history")
        newest = sorted(items, key=lambda item: item.item_id, reverse=True)
        codes = [item.codes for item in newest[:limit]]
        query_aware = self.user_model.config.query_aware
        # One encoder pass serves both the query-aware token and the choice of words.
        needs_query = query_aware or self.item_words is not None
        query_vector = self.item_vectors([query])[0] if needs_query else None
        words: list[str] = []
        if self.item_words and query_vector is not None:
            word_codes = [item.codes for item in newest[:words_limit]]
            words = self.words_for(self.item_words, word_codes, query_vector)
        return Personalization(
            self.soft_tokens_for(codes, query_vector if query_aware else None),
            user_id,
            history_items=len(codes),
            prototypes=top_prototypes(codes),
            words=tuple(words),
        )
