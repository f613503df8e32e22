"""Teacher-forced scoring of a target reply under a (soft) prompt.

Training minimises this loss and evaluation reports it (the gold per-token loss), so both
build the sequence here: prompt tokens, soft tokens, then the target, with labels on the
target only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class EmbeddingLM(Protocol):
    """What scoring needs from a backend: the transformers backend provides it."""

    def tokenize(self, text: str) -> list[int]: ...

    def prompt_embeddings(
        self, before: list[int], soft: torch.Tensor | None, after: list[int]
    ) -> torch.Tensor: ...

    @property
    def model(self) -> Any: ...

    @property
    def special_tokens(self) -> Any: ...


@dataclass
class TeacherForcedExample:
    embeddings: torch.Tensor  # (L, H)
    labels: torch.Tensor  # (L,) long, IGNORE_INDEX outside the target


def teacher_forced_example(
    lm: EmbeddingLM,
    before: str,
    soft: torch.Tensor | None,
    after: str,
    target: str,
    *,
    include_end: bool = True,
    max_target_tokens: int | None = None,
) -> TeacherForcedExample:
    """The prompt (text + soft) followed by the target; the target is what gets scored.

    With ``include_end`` the end-of-turn token follows the target and is scored too, which
    teaches the model to stop after the reply.
    """
    target_ids = lm.tokenize(target)
    if max_target_tokens is not None:
        target_ids = target_ids[:max_target_tokens]
    if include_end:
        target_ids = target_ids + lm.tokenize(lm.special_tokens["eos_token"])
    before_ids, after_ids = lm.tokenize(before), lm.tokenize(after)
    if soft is None or not len(soft):
        # Without soft tokens the prompt is one text: keep its tokenization unsplit.
        before_ids, after_ids = lm.tokenize(before + after), []
    embeddings = lm.prompt_embeddings(before_ids, soft, after_ids + target_ids)
    prompt_length = embeddings.shape[0] - len(target_ids)
    labels = torch.full((embeddings.shape[0],), IGNORE_INDEX, dtype=torch.long)
    labels[prompt_length:] = torch.tensor(target_ids, dtype=torch.long)
    return TeacherForcedExample(embeddings, labels)


def collate(examples: list[TeacherForcedExample]) -> dict[str, torch.Tensor]:
    """Right-pad a batch: inputs_embeds (B, L, H), attention_mask (B, L), labels (B, L)."""
    length = max(e.embeddings.shape[0] for e in examples)
    hidden = examples[0].embeddings.shape[1]
    device = examples[0].embeddings.device
    embeds = torch.zeros(
        len(examples), length, hidden, device=device, dtype=examples[0].embeddings.dtype
    )
    mask = torch.zeros(len(examples), length, dtype=torch.long, device=device)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long, device=device)
    for row, example in enumerate(examples):
        size = example.embeddings.shape[0]
        embeds[row, :size] = example.embeddings
        mask[row, :size] = 1
        labels[row, :size] = example.labels.to(device)
    return {"inputs_embeds": embeds, "attention_mask": mask, "labels": labels}


def token_losses(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed target loss (B,) and target token counts (B,)."""
    logits = model(
        inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"]
    ).logits
    shifted_logits = logits[:, :-1].float()
    shifted_labels = batch["labels"][:, 1:]
    losses = F.cross_entropy(
        shifted_logits.transpose(1, 2), shifted_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B, L-1)
    counts = (shifted_labels != IGNORE_INDEX).sum(1)
    return losses.sum(1), counts
