"""Stage 2's loss: soft tokens from what trains, and the target's next-token loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from curp_chain.runtime.prompt import build_soft_prompt
from curp_chain.runtime.scoring import collate, teacher_forced_example, token_losses
from curp_chain.training.examples import Example


class SoftTokenSource(nn.Module):
    """What stage 2 trains, behind one ``forward`` (so that DDP can synchronise gradients).

    Wraps a CurpUserModel (soft tokens from history + query) or a TaskPrompt (the same
    tokens for everyone). Returns soft tokens (B, T, H) and the weighted auxiliary losses
    (the codebook's VQ loss when it trains; the shared-offset penalty).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        train_codebook: bool = False,
        codebook_loss_weight: float = 1.0,
        shared_offset_weight: float = 0.0,
    ):
        super().__init__()
        self.module = module
        self.train_codebook = train_codebook
        self.codebook_loss_weight = codebook_loss_weight
        self.shared_offset_weight = shared_offset_weight

    @property
    def task_only(self) -> bool:
        from curp_chain.model.task_prompt import TaskPrompt

        return isinstance(self.module, TaskPrompt)

    def forward(self, items: Tensor, mask: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        """items (B, N, D), mask (B, N) bool, query (B, D)."""
        if self.task_only:
            vectors: Tensor = self.module()  # (T, H)
            return vectors[None].expand(items.shape[0], -1, -1), vectors.new_zeros(())
        model: Any = self.module
        aux = items.new_zeros(())
        if self.train_codebook:
            output = model.quantizer(items)
            items, aux = output.quantized, self.codebook_loss_weight * output.loss
        projected = model.projected(items, mask, query)
        if self.training and self.shared_offset_weight:
            aux = aux + self.shared_offset_weight * projected.shared_offset
        return projected.soft, aux


def batch_loss(
    lm: Any,
    soft: Tensor | None,
    examples: Sequence[Example],
    *,
    max_target_tokens: int,
    max_prompt_chars: int = 600,
) -> tuple[Tensor, Tensor]:
    """Per-example summed target loss (B,) and target token counts (B,).

    ``soft`` is (B, T, H), or None for the plain prompt. Every prompt goes through
    build_soft_prompt and every sequence through the shared scoring code.
    """
    built = []
    for row, example in enumerate(examples):
        turns = example.turns(max_prompt_chars)
        vectors = None if soft is None else soft[row]
        placeholder = None if vectors is None else np.zeros((len(vectors), 1), np.float32)
        prompt = build_soft_prompt(lm.chat_template, turns, placeholder, lm.special_tokens)
        built.append(
            teacher_forced_example(
                lm,
                prompt.before,
                vectors,
                prompt.after,
                example.target,
                max_target_tokens=max_target_tokens,
            )
        )
    return token_losses(lm.model, collate(built))


def user_margin_loss(
    lm: Any,
    soft: Tensor,
    batch: Sequence[Example],
    own: Tensor,
    *,
    max_target_tokens: int,
    margin: float,
) -> Tensor:
    """Hinge on own loss + margin - loss with another example's soft tokens, per example.

    Each example is scored again with the soft tokens of the next example in the batch
    (another user's history): the term is zero only when the user's own history beats
    someone else's by ``margin`` nats per token, so ignoring the history cannot minimise it.
    """
    sums, counts = batch_loss(lm, soft.roll(1, dims=0), batch, max_target_tokens=max_target_tokens)
    other = sums / counts.clamp(min=1)
    return torch.relu(margin + own - other).mean()
