"""Stage 2's validation: the gold per-token loss in each condition, and sample replies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from curp_chain.interfaces.protocols import GenerationParams, SoftPrompt
from curp_chain.runtime.prompt import build_soft_prompt
from curp_chain.training.batching import Encoded, pad_items
from curp_chain.training.examples import Example, derangement
from curp_chain.training.loss import SoftTokenSource, batch_loss

CONDITIONS = ("own", "shuffled", "none", "task")


@torch.no_grad()
def validate(
    lm: Any,
    source: SoftTokenSource | None,
    task: SoftTokenSource | None,
    examples: Sequence[Example],
    encoded: Sequence[Encoded],
    *,
    conditions: Sequence[str],
    batch_size: int,
    max_target_tokens: int,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Gold per-token loss (total target loss / total target tokens) per condition, and
    the paired per-example difference of "own" against each other condition."""
    device = lm.device
    shuffle = derangement(len(examples), seed)
    per_example: dict[str, list[tuple[float, int]]] = {}
    for condition in conditions:
        rows: list[tuple[float, int]] = []
        starts = range(0, len(examples), batch_size)
        bar = tqdm(
            starts, desc=f"validate {condition}", unit="batch", disable=not progress, leave=False
        )
        for start in bar:
            batch = list(examples[start : start + batch_size])
            indices = list(range(start, start + len(batch)))
            soft = None
            if condition in ("own", "shuffled"):
                assert source is not None
                history_of = indices if condition == "own" else [shuffle[i] for i in indices]
                stacked = [
                    Encoded(encoded[h].items, encoded[i].query)
                    for h, i in zip(history_of, indices, strict=True)
                ]
                soft, _ = source(*pad_items(stacked, device))
            elif condition == "task":
                assert task is not None
                soft, _ = task(*pad_items([encoded[i] for i in indices], device))
            sums, counts = batch_loss(lm, soft, batch, max_target_tokens=max_target_tokens)
            rows += list(zip(sums.tolist(), counts.tolist(), strict=True))
        per_example[condition] = rows
    result: dict[str, Any] = {"users": len(examples)}
    for condition, rows in per_example.items():
        result[condition] = round(sum(s for s, _ in rows) / max(sum(c for _, c in rows), 1), 4)
    if "own" in per_example:
        own = np.array([s / max(c, 1) for s, c in per_example["own"]])
        for other in conditions:
            if other == "own":
                continue
            theirs = np.array([s / max(c, 1) for s, c in per_example[other]])
            diff = own - theirs
            result[f"own_minus_{other}"] = {
                "mean": round(float(diff.mean()), 4),
                "stderr": round(float(diff.std(ddof=1) / math.sqrt(len(diff))), 4)
                if len(diff) > 1
                else None,
                "own_lower_fraction": round(float((diff < 0).mean()), 3),
            }
    return result


@torch.no_grad()
def generation_sample(
    lm: Any,
    source: SoftTokenSource,
    examples: Sequence[Example],
    encoded: Sequence[Encoded],
    *,
    max_tokens: int = 40,
) -> list[dict[str, str]]:
    """Greedy replies (repeated 4-grams blocked) with the trained soft tokens, for a look."""
    samples = []
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0, no_repeat_ngram_size=4)
    for example, enc in zip(examples, encoded, strict=True):
        soft, _ = source(*pad_items([enc], lm.device))
        vectors = soft[0].float().cpu().numpy()
        prompt = build_soft_prompt(lm.chat_template, example.turns(), vectors, lm.special_tokens)
        reply = "".join(
            c.text for c in lm.stream(SoftPrompt(prompt.before, vectors, prompt.after), params)
        )
        samples.append(
            {
                "input": example.shown_input,
                "reply": reply,
                "gold": example.target,
            }
        )
    return samples
