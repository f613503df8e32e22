"""The CURP user model folded for serving: the same function of codes, in fewer ops.

A request sees at most ``max_history_items`` items, so the user model's cost there is
dispatch overhead, not arithmetic (nn.MultiheadAttention alone runs dozens of checks and
small ops per call). Everything linear between a code and the attention keys and values
is folded into one table row per (subspace, prototype): an item's keys and values are then
one gather-and-sum over its codes. The trait queries depend on no input and are projected
once. Tests check the output against `CurpUserModel` itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from curp_chain.model.user_model import CrossAttentionPool, CurpUserModel


class _FoldedPool:
    """One `CrossAttentionPool` with its key and value maps split out of in_proj."""

    def __init__(self, pool: CrossAttentionPool):
        attention = pool.attention
        d = attention.embed_dim
        weight, bias = attention.in_proj_weight, attention.in_proj_bias
        if weight is None or bias is None or attention.bias_k is not None:
            raise ValueError("folding needs nn.MultiheadAttention with its default layout")
        self.heads = attention.num_heads
        self.scale = 1.0 / math.sqrt(d // self.heads)
        # Clones: a snapshot of the weights, not views that later training would move.
        self.q_weight, self.k_weight, self.v_weight = weight.detach().clone().split(d)
        self.q_bias, self.k_bias, self.v_bias = bias.detach().clone().split(d)
        self.out_weight = attention.out_proj.weight.detach().clone()
        self.out_bias = attention.out_proj.bias.detach().clone()
        norm = pool.norm
        self.norm_shape, self.norm_eps = norm.normalized_shape, norm.eps
        self.norm_weight, self.norm_bias = norm.weight.detach().clone(), norm.bias.detach().clone()

    def attend(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """queries (Q, d) already projected, keys and values (N, d) -> normed readout (Q, d)."""
        heads = self.heads
        q = queries.unflatten(-1, (heads, -1)).transpose(0, 1)  # (h, Q, dh)
        k = keys.unflatten(-1, (heads, -1)).transpose(0, 1)  # (h, N, dh)
        v = values.unflatten(-1, (heads, -1)).transpose(0, 1)
        weights = torch.softmax((q * self.scale) @ k.transpose(1, 2), dim=-1)  # (h, Q, N)
        pooled = (weights @ v).transpose(0, 1).flatten(1)  # (Q, d)
        pooled = F.linear(pooled, self.out_weight, self.out_bias)
        return F.layer_norm(
            pooled, self.norm_shape, self.norm_weight, self.norm_bias, self.norm_eps
        )


class FoldedUserModel:
    """Soft tokens of one user from codes, equal (to float rounding) to `CurpUserModel`'s
    in eval mode. A snapshot of the model's weights: later changes to it are not seen."""

    @torch.no_grad()
    def __init__(self, model: CurpUserModel):
        config = model.config
        self.num_subspaces = config.num_subspaces
        self.codebook_size = config.codebook_size
        self.use_traits = config.num_trait_tokens > 0
        self.query_aware = config.query_aware
        self.trait_pool = _FoldedPool(model.trait_pool)
        self.query_pool = _FoldedPool(model.query_pool)
        prototypes = model.quantizer.prototypes  # (M, K, s)
        m, k, s = prototypes.shape
        item_weight = model.item_in.weight.unflatten(1, (m, s))  # (d, M, s)
        per_code = torch.einsum("mks,dms->mkd", prototypes, item_weight)  # (M, K, d)
        # item = sum over subspaces of per_code + item bias; keys and values are linear in
        # it, so each pool's key and value rows fold in, with the bias added once.
        tables, biases = [], []
        for pool in (self.trait_pool, self.query_pool):
            for weight, bias in ((pool.k_weight, pool.k_bias), (pool.v_weight, pool.v_bias)):
                tables.append(per_code @ weight.T)
                biases.append(model.item_in.bias @ weight.T + bias)
        self.table = torch.cat(tables, dim=-1).reshape(m * k, -1).contiguous()  # (M*K, 4d)
        self.table_bias = torch.cat(biases)
        self.offsets = torch.arange(m) * k
        pool = self.trait_pool
        self.trait_queries = F.linear(model.trait_queries, pool.q_weight, pool.q_bias)
        # query_in then the query pool's query map: one linear map of the query vector.
        pool = self.query_pool
        self.query_weight = pool.q_weight @ model.query_in.weight
        self.query_bias = pool.q_weight @ model.query_in.bias + pool.q_bias
        projector = model.projector
        first, last = projector.mlp[0], projector.mlp[2]
        if not isinstance(first, nn.Linear) or not isinstance(last, nn.Linear):
            raise ValueError("folding needs the projector's Linear-GELU-Linear offset")
        self.hidden = (first.weight.detach().clone(), first.bias.detach().clone())
        self.out = (last.weight.detach().clone(), last.bias.detach().clone())
        self.base = projector.base - projector.offset_mean  # eval mode centres on the mean

    @torch.inference_mode()
    def soft_tokens(
        self, codes: Tensor, query_vector: Tensor | None, *, use_query_token: bool = True
    ) -> Tensor:
        """codes (N, M) long of one user, query_vector (D,) or None -> soft tokens (T, H)."""
        if codes.ndim != 2 or codes.shape[1] != self.num_subspaces:
            raise ValueError(
                f"expected codes of shape (N, {self.num_subspaces}), got {tuple(codes.shape)}"
            )
        if not len(codes):
            raise ValueError("every user needs at least one history item to build soft tokens")
        rows = F.embedding_bag(codes + self.offsets, self.table, mode="sum") + self.table_bias
        trait_k, trait_v, query_k, query_v = rows.chunk(4, dim=-1)  # each (N, d)
        tokens = []
        if self.use_traits:
            tokens.append(self.trait_pool.attend(self.trait_queries, trait_k, trait_v))
        if self.query_aware and use_query_token:
            if query_vector is None:
                raise ValueError("this model is query-aware: pass the query's encoder vector")
            query = F.linear(query_vector.reshape(1, -1), self.query_weight, self.query_bias)
            tokens.append(self.query_pool.attend(query, query_k, query_v))
        if not tokens:
            raise ValueError("no soft tokens: the query-aware token was disabled and T=0")
        x = torch.cat(tokens)  # (T, d)
        hidden = F.gelu(F.linear(x, *self.hidden))
        return self.base[: len(x)] + F.linear(hidden, *self.out)
