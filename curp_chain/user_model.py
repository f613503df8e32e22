"""The CURP user model: quantized history -> trait tokens + query-aware token -> soft tokens."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from curp_chain.codebook import ProductQuantizer
from curp_chain.config import CurpConfig


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


class Projector(nn.Module):
    """MLP from aggregator width into the LLM's input-embedding space, RMS-matched."""

    def __init__(self, dim: int, hidden: int, out_dim: int, rms: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        # Soft tokens far off the scale of real token embeddings derail a frozen LLM, so each
        # token is RMS-normalised and scaled by a learned per-channel gain that starts at the
        # LLM's own embedding RMS.
        self.gain = nn.Parameter(torch.full((out_dim,), rms))

    def forward(self, x: Tensor) -> Tensor:
        y = self.mlp(x)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)
        return y * self.gain


class CurpUserModel(nn.Module):
    """Codebook, dual aggregator and projector: everything CURP trains."""

    def __init__(self, config: CurpConfig):
        super().__init__()
        self.config = config
        c = config
        self.quantizer = ProductQuantizer(c.encoder_dim, c.num_subspaces, c.codebook_size)
        self.item_in = nn.Linear(c.encoder_dim, c.model_dim)
        self.query_in = nn.Linear(c.encoder_dim, c.model_dim)
        self.trait_queries = nn.Parameter(torch.randn(c.num_trait_tokens, c.model_dim) * 0.02)
        self.trait_pool = CrossAttentionPool(c.model_dim, c.num_heads)
        self.query_pool = CrossAttentionPool(c.model_dim, c.num_heads)
        self.projector = Projector(
            c.model_dim, c.projector_hidden, c.llm_hidden_size, c.soft_token_rms
        )

    def soft_tokens(
        self,
        item_vectors: Tensor,
        item_mask: Tensor,
        query_vector: Tensor | None,
        *,
        use_query_token: bool = True,
    ) -> Tensor:
        """Soft tokens from item vectors (quantized, or raw for the no-quantization ablation).

        item_vectors (B, N, D), item_mask (B, N) bool, query_vector (B, D) or None.
        Returns (B, T, H): the trait tokens, then the query-aware token when enabled.
        Every row of item_mask must have at least one True entry.
        """
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
