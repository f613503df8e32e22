"""The CURP user model: quantized history -> trait tokens + query-aware token -> soft tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from curp_chain.model.config import CurpConfig
from curp_chain.model.quantizer import ProductQuantizer
from curp_chain.model.style import with_style


class CrossAttentionPool(nn.Module):
    """Queries attend over the user's items (masked); the output is the normalised readout.

    There is deliberately no residual path from the query to the output: every soft token
    is made of the user's items, so it can only carry what their history holds. (With a
    residual, the query-aware token carried the query itself, and training learned an
    input-conditioned prompt that ignored the history: own and another user's history
    then scored the same.)
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, queries: Tensor, items: Tensor, item_mask: Tensor) -> tuple[Tensor, Tensor]:
        """queries (B, Q, d), items (B, N, d), item_mask (B, N) True where an item exists.

        Returns pooled (B, Q, d) and attention weights (B, Q, N).
        """
        pooled, weights = self.attention(
            queries, items, items, key_padding_mask=~item_mask, need_weights=True
        )
        return self.norm(pooled), weights


class ProjectorOutput(NamedTuple):
    soft: Tensor
    """(B, T, out_dim) soft tokens: the base prompt plus the centred history offset."""
    shared_offset: Tensor
    """Scalar: mean square of the batch's mean offset, for the training penalty that keeps
    the offset's shared part small (zero in eval mode)."""


class Projector(nn.Module):
    """Aggregator tokens -> soft tokens: a learned base prompt plus a history-made offset
    that is centred over users.

    The base carries what every request gains from (the task); the offset only how this
    user differs from the average user: during training it is centred on the batch mean, and
    a running mean of those batch means (like batch normalisation's) centres it at serving
    time. Without the centring, the offset's shared part grew far larger than its per-user
    part (norm 45 against 0.1 after 40 steps), the LLM saw the same vector for everyone, and
    another user's history scored exactly the same as the user's own. The offset's last layer
    starts at zero, so training starts from a plain prompt.
    """

    offset_mean: Tensor

    def __init__(
        self,
        dim: int,
        hidden: int,
        out_dim: int,
        num_tokens: int,
        rms: float,
        momentum: float = 0.05,
    ):
        super().__init__()
        # The base starts at the scale of the LLM's own token embeddings.
        self.base = nn.Parameter(torch.randn(num_tokens, out_dim) * rms)
        last = nn.Linear(hidden, out_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), last)
        self.momentum = momentum
        self.register_buffer("offset_mean", torch.zeros(num_tokens, out_dim))

    def forward(self, x: Tensor) -> ProjectorOutput:
        """x (B, T, dim) -> soft tokens (B, T, out_dim) and the shared-offset penalty; T may
        be fewer than the base's tokens (the no-query ablation drops the last one). Training
        batches need B >= 2."""
        tokens = x.shape[1]
        offset = self.mlp(x)
        if self.training:
            if x.shape[0] < 2:
                raise ValueError("training the projector needs at least 2 examples per batch")
            batch_mean = offset.mean(0)
            # Kept small by a training penalty: a large shared part cancels out in training,
            # but it turns a shift in who the users are into a large shift of every soft token.
            shared_offset = batch_mean.pow(2).mean()
            with torch.no_grad():
                running = self.offset_mean[:tokens]
                running.lerp_(batch_mean.detach(), self.momentum)
            centre = batch_mean
        else:
            shared_offset = x.new_zeros(())
            centre = self.offset_mean[:tokens]
        return ProjectorOutput(self.base[:tokens] + offset - centre, shared_offset)


class CurpUserModel(nn.Module):
    """Codebook, dual aggregator and projector: everything CURP trains."""

    def __init__(self, config: CurpConfig):
        super().__init__()
        self.config = config
        c = config
        self.quantizer = ProductQuantizer(c.item_dim, c.num_subspaces, c.codebook_size)
        self.item_in = nn.Linear(c.item_dim, c.model_dim)
        self.query_in = nn.Linear(c.item_dim, c.model_dim)
        self.trait_queries = nn.Parameter(torch.randn(c.num_trait_tokens, c.model_dim) * 0.02)
        self.trait_pool = CrossAttentionPool(c.model_dim, c.num_heads)
        self.query_pool = CrossAttentionPool(c.model_dim, c.num_heads)
        self.projector = Projector(
            c.model_dim, c.projector_hidden, c.llm_hidden_size, c.num_soft_tokens, c.soft_token_rms
        )

    def item_vectors(self, encoder_vectors: Tensor, texts: Sequence[str]) -> Tensor:
        """What the codebook quantizes: the encoder vectors (N, encoder_dim) of ``texts``,
        followed by their style features when this model uses them."""
        return with_style(encoder_vectors, texts, self.config.style_dim)

    def soft_tokens(
        self,
        item_vectors: Tensor,
        item_mask: Tensor,
        query_vector: Tensor | None,
        *,
        use_query_token: bool = True,
    ) -> Tensor:
        """Soft tokens from item vectors (quantized, or raw for the no-quantization ablation).

        item_vectors (B, N, D), item_mask (B, N) bool, query_vector (B, D) or None, with D
        the item width (encoder vector plus style features, see :meth:`item_vectors`).
        Returns (B, T, H): the trait tokens, then the query-aware token when enabled.
        Every row of item_mask must have at least one True entry.
        """
        return self.projected(
            item_vectors, item_mask, query_vector, use_query_token=use_query_token
        ).soft

    def projected(
        self,
        item_vectors: Tensor,
        item_mask: Tensor,
        query_vector: Tensor | None,
        *,
        use_query_token: bool = True,
    ) -> ProjectorOutput:
        """:meth:`soft_tokens` with the projector's shared-offset penalty, which training
        adds to its loss."""
        if not bool(item_mask.any(-1).all()):
            raise ValueError("every user needs at least one history item to build soft tokens")
        items = self.item_in(item_vectors)  # (B, N, d)
        batch = items.shape[0]
        tokens: list[Tensor] = []
        if self.config.num_trait_tokens:
            queries = self.trait_queries[None].expand(batch, -1, -1)
            traits, _ = self.trait_pool(queries, items, item_mask)
            tokens.append(traits)
        if self.config.query_aware and use_query_token:
            if query_vector is None:
                raise ValueError("this model is query-aware: pass the query's encoder vector")
            query = self.query_in(query_vector)[:, None]  # (B, 1, d)
            pooled, _ = self.query_pool(query, items, item_mask)
            tokens.append(pooled)
        if not tokens:
            raise ValueError("no soft tokens: the query-aware token was disabled and T=0")
        return self.projector(torch.cat(tokens, dim=1))

    def forward(
        self,
        codes: Tensor,
        item_mask: Tensor,
        query_vector: Tensor | None,
        *,
        use_query_token: bool = True,
    ) -> Tensor:
        """codes (B, N, M) long -> soft tokens (B, T, H), decoding codes through the codebook."""
        return self.soft_tokens(
            self.quantizer.decode(codes), item_mask, query_vector, use_query_token=use_query_token
        )

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
