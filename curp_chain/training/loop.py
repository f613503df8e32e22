"""Stage 2's optimisation loop: seeded batches, accumulation, schedule, resumable state."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from curp_chain.training.batching import Encoded, example_index, pad_items
from curp_chain.training.examples import Example
from curp_chain.training.loss import SoftTokenSource, batch_loss, user_margin_loss
from curp_chain.training.options import ProjectorOptions
from curp_chain.training.state import load_state, save_state

logger = logging.getLogger(__name__)


def lr_at(step: int, *, base: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of ``base`` at ``total`` steps."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class LoopResult:
    steps: int
    examples_seen: int
    train_loss: float
    wall_s: float
    history: list[dict[str, Any]]


@dataclass
class _Progress:
    """Where the loop stands; restored from the saved state on --resume."""

    step: int = 0
    seen: int = 0
    elapsed_before: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def restored(cls, saved: dict[str, Any] | None) -> _Progress:
        if not saved:
            return cls()
        return cls(
            int(saved["step"]),
            int(saved["examples_seen"]),
            float(saved.get("wall_s", 0.0)),
            list(saved.get("history", [])),
        )


def _out_of_time(accelerator: Any, start: float, budget_minutes: float | None) -> bool:
    """Whether this run's --time-budget is spent; every process gets the same answer, so
    all stop after the same step."""
    if not budget_minutes:
        return False
    spent = torch.tensor(float(time.monotonic() - start > 60 * float(budget_minutes)))
    return bool(accelerator.reduce(spent.to(accelerator.device), reduction="max").item())


def _micro_batch(
    accelerator: Any, seen: int, micro: int, n: int, options: ProjectorOptions
) -> list[int]:
    # The global example order is a seeded shuffle per epoch; each process takes its slice
    # of every micro-batch, so all processes advance through the same data.
    size = options.batch_size
    offset = seen + micro * size * accelerator.num_processes + accelerator.process_index * size
    return [example_index(offset + i, n, options.seed) for i in range(size)]


def _optimizer_step(
    *,
    accelerator: Any,
    lm: Any,
    wrapped: Any,
    optimizer: Any,
    source: SoftTokenSource,
    examples: Sequence[Example],
    encoded: Sequence[Encoded],
    seen: int,
    options: ProjectorOptions,
) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns its mean loss."""
    trainable = [p for p in source.parameters() if p.requires_grad]
    step_loss = 0.0
    for micro in range(options.grad_accum):
        indices = _micro_batch(accelerator, seen, micro, len(examples), options)
        batch = [examples[i] for i in indices]
        with accelerator.accumulate(wrapped):
            soft, aux = wrapped(*pad_items([encoded[i] for i in indices], lm.device))
            sums, counts = batch_loss(lm, soft, batch, max_target_tokens=options.max_target_tokens)
            loss = sums.sum() / counts.sum().clamp(min=1) + aux
            if options.user_margin_weight and not source.task_only and len(batch) > 1:
                loss = loss + options.user_margin_weight * user_margin_loss(
                    lm,
                    soft,
                    batch,
                    sums / counts.clamp(min=1),
                    max_target_tokens=options.max_target_tokens,
                    margin=options.user_margin,
                )
            accelerator.backward(loss)
            if accelerator.sync_gradients and options.max_grad_norm:
                accelerator.clip_grad_norm_(trainable, options.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        step_loss += loss.item() / options.grad_accum
    return step_loss


def _set_lr(optimizer: Any, step: int, options: ProjectorOptions) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, base=options.lr, warmup=options.warmup, total=options.max_steps)


def _validation_due(step: int, options: ProjectorOptions) -> bool:
    """Every --val-every steps, but not at the last step: the final validation follows."""
    every = options.val_every
    return bool(every) and step % every == 0 and step < options.max_steps


def _save_due(step: int, options: ProjectorOptions) -> bool:
    save_every = options.save_every
    return bool(save_every and step % save_every == 0) or step == options.max_steps


def _save(
    accelerator: Any,
    wrapped: Any,
    optimizer: Any,
    state_dir: Path,
    progress: _Progress,
    wall: float,
) -> None:
    save_state(
        state_dir,
        accelerator.unwrap_model(wrapped),
        optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
        {
            "step": progress.step,
            "examples_seen": progress.seen,
            "wall_s": round(wall, 1),
            "history": progress.history,
        },
    )


def train_loop(
    *,
    accelerator: Any,
    lm: Any,
    source: SoftTokenSource,
    examples: Sequence[Example],
    encoded: Sequence[Encoded],
    options: ProjectorOptions,
    state_dir: Path,
    on_validate: Callable[[int], dict[str, Any]] | None,
) -> LoopResult:
    """Optimise ``source`` for ``max_steps`` optimizer steps of batch x accumulation x
    processes examples, resuming from ``state_dir`` when it holds a saved state."""
    max_steps = options.max_steps
    trainable = [p for p in source.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay)
    progress = _Progress.restored(
        load_state(state_dir, source, optimizer) if options.resume else None
    )
    if progress.step:
        logger.info("resumed from %s at step %d", state_dir, progress.step)
    wrapped, optimizer = accelerator.prepare(source, optimizer)
    per_step = options.batch_size * options.grad_accum * accelerator.num_processes
    seen_at_start, start = progress.seen, time.monotonic()
    recent: list[float] = []
    main = accelerator.is_local_main_process
    bar = tqdm(total=max_steps, initial=progress.step, desc="align", unit="step", disable=not main)
    while progress.step < max_steps:
        _set_lr(optimizer, progress.step, options)
        step_loss = _optimizer_step(
            accelerator=accelerator, lm=lm, wrapped=wrapped, optimizer=optimizer, source=source,
            examples=examples, encoded=encoded, seen=progress.seen, options=options,
        )  # fmt: skip
        progress.seen += per_step
        progress.step += 1
        recent = [*recent, step_loss][-20:]
        wall = progress.elapsed_before + time.monotonic() - start
        bar.update(1)
        rate = (progress.seen - seen_at_start) / max(time.monotonic() - start, 1e-9)
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}", ex_s=f"{rate:.2f}")
        record: dict[str, Any] = {
            "step": progress.step,
            "loss": round(step_loss, 4),
            "examples_seen": progress.seen,
            "wall_s": round(wall, 1),
        }
        if on_validate is not None and _validation_due(progress.step, options):
            record["validation"] = on_validate(progress.step)
            logger.info("step %d validation %s", progress.step, json.dumps(record["validation"]))
        progress.history.append(record)
        out_of_time = _out_of_time(accelerator, start, options.time_budget)
        if accelerator.is_main_process and (_save_due(progress.step, options) or out_of_time):
            _save(accelerator, wrapped, optimizer, state_dir, progress, wall)
        if out_of_time:
            logger.info("time budget reached at step %d of %d", progress.step, max_steps)
            break
    bar.close()
    tail = [h["loss"] for h in progress.history[-20:]]
    return LoopResult(
        progress.step,
        progress.seen,
        sum(tail) / max(len(tail), 1),
        progress.elapsed_before + time.monotonic() - start,
        progress.history,
    )
