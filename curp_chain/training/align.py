"""Stage 2: align the user model's soft tokens with the frozen LLM.

The LLM and the sentence encoder stay frozen. The aggregator and projector (and, with
``train_codebook``, the prototypes) learn to lower the next-token loss of a user's real
tweet, given a neutral paraphrase of it and the user's other tweets as history. The prompt
is built by :func:`curp_chain.prompt.build_soft_prompt` and scored by
:mod:`curp_chain.scoring`, the same code the runtime and the evaluation use, so the soft
tokens sit exactly where they will be served.

With ``task_only`` the same loop trains a :class:`~curp_chain.task_prompt.TaskPrompt`: as
many free soft vectors as CURP has soft tokens, the same for every user, on the same
examples and budget. It is the baseline that tells personalization from task adaptation.

Validation is the gold tweets' per-token loss on the LaMP-7 users (profile as history,
their ``input`` as the prompt), in up to four conditions: the user's own soft tokens,
another user's (shuffled), none, and the task-only prompt.

Training runs through ``accelerate``: one process on a CPU, and the same command on one or
more GPUs (``accelerate launch -m curp_chain.training.cli train projector ...``), where
each process takes its share of every batch and gradients are averaged across processes.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from curp_chain.prompt import build_soft_prompt
from curp_chain.protocols import GenerationParams, SoftPrompt
from curp_chain.scoring import collate, teacher_forced_example, token_losses
from curp_chain.style import with_style
from curp_chain.training.examples import (
    Example,
    derangement,
    load_generic,
    training_examples,
    validation_examples,
)

logger = logging.getLogger(__name__)

CONDITIONS = ("own", "shuffled", "none", "task")


@dataclass
class Encoded:
    """An example's vectors: history items (N, D) (quantized unless the codebook trains) and
    the query, the encoder vector of the whole user message, as the runtime computes it."""

    items: Tensor
    query: Tensor


# --- the trainable part ------------------------------------------------------------------------


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
        from curp_chain.task_prompt import TaskPrompt

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
        soft = model.soft_tokens(items, mask, query)
        shared = model.projector.shared_offset
        if self.training and self.shared_offset_weight and shared is not None:
            aux = aux + self.shared_offset_weight * shared
        return soft, aux


def pad_items(encoded: Sequence[Encoded], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(B, N, D) items, (B, N) mask, (B, D) queries."""
    length = max(len(e.items) for e in encoded)
    dim = encoded[0].items.shape[1]
    items = torch.zeros(len(encoded), length, dim)
    mask = torch.zeros(len(encoded), length, dtype=torch.bool)
    for row, e in enumerate(encoded):
        items[row, : len(e.items)] = e.items
        mask[row, : len(e.items)] = True
    queries = torch.stack([e.query for e in encoded])
    return items.to(device), mask.to(device), queries.to(device)


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


# --- validation --------------------------------------------------------------------------------


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


# --- resumable state ---------------------------------------------------------------------------


def save_state(
    folder: Path, source: SoftTokenSource, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Trainable weights, optimizer moments (safetensors) and counters (JSON); no pickle."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in source.state_dict().items()}
    save_file(weights, str(folder / "trainable.safetensors"))
    opt = optimizer.state_dict()
    tensors = {}
    for index, param_state in opt["state"].items():
        for name, value in param_state.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(folder / "optimizer.safetensors"))
    record = {**state, "param_groups": opt["param_groups"]}
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(folder / "state.json")


def load_state(
    folder: Path, source: SoftTokenSource, optimizer: torch.optim.Optimizer
) -> dict[str, Any] | None:
    """Restore what :func:`save_state` wrote; None when ``folder`` holds no state."""
    if not (folder / "state.json").is_file():
        return None
    record = json.loads((folder / "state.json").read_text())
    source.load_state_dict(load_file(str(folder / "trainable.safetensors")))
    tensors = load_file(str(folder / "optimizer.safetensors"))
    param_state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        param_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": param_state, "param_groups": record.pop("param_groups")})
    return dict(record)


# --- the loop ----------------------------------------------------------------------------------


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


def user_margin_loss(
    lm: Any, soft: Tensor, batch: Sequence[Example], own: Tensor, options: dict[str, Any]
) -> Tensor:
    """Hinge on own loss + margin - loss with another example's soft tokens, per example.

    Each example is scored again with the soft tokens of the next example in the batch
    (another user's history): the term is zero only when the user's own history beats
    someone else's by ``user_margin`` nats per token, so ignoring the history cannot
    minimise it.
    """
    sums, counts = batch_loss(
        lm, soft.roll(1, dims=0), batch, max_target_tokens=int(options["max_target_tokens"])
    )
    other = sums / counts.clamp(min=1)
    margin = float(options.get("user_margin") or 0.0)
    return torch.relu(margin + own - other).mean()


def train_loop(
    *,
    accelerator: Any,
    lm: Any,
    source: SoftTokenSource,
    examples: Sequence[Example],
    encoded: Sequence[Encoded],
    options: dict[str, Any],
    state_dir: Path,
    on_validate: Callable[[int], dict[str, Any]] | None,
) -> LoopResult:
    """Optimise ``source`` for ``max_steps`` optimizer steps of batch x accumulation x
    processes examples, resuming from ``state_dir`` when it holds a saved state."""
    batch_size = int(options["batch_size"])
    accumulation = int(options["grad_accum"])
    max_steps = int(options["max_steps"])
    trainable = [p for p in source.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=float(options["lr"]), weight_decay=float(options["weight_decay"])
    )
    resumed = load_state(state_dir, source, optimizer) if options.get("resume") else None
    step = int(resumed["step"]) if resumed else 0
    seen = int(resumed["examples_seen"]) if resumed else 0
    history: list[dict[str, Any]] = list(resumed.get("history", [])) if resumed else []
    elapsed_before = float(resumed.get("wall_s", 0.0)) if resumed else 0.0
    seen_at_start = seen
    if resumed:
        logger.info("resumed from %s at step %d", state_dir, step)
    wrapped, optimizer = accelerator.prepare(source, optimizer)

    processes = accelerator.num_processes
    per_step = batch_size * accumulation * processes
    start = time.monotonic()
    recent: list[float] = []
    bar = tqdm(
        total=max_steps,
        initial=step,
        desc="align",
        unit="step",
        disable=not accelerator.is_local_main_process,
    )
    margin_weight = float(options.get("user_margin_weight") or 0.0)
    while step < max_steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(
                step, base=float(options["lr"]), warmup=int(options["warmup"]), total=max_steps
            )
        step_loss = 0.0
        for micro in range(accumulation):
            # The global example order is a seeded shuffle per epoch; each process takes its
            # slice of every micro-batch, so all processes advance through the same data.
            offset = seen + micro * batch_size * processes + accelerator.process_index * batch_size
            indices = [
                _example_index(offset + i, len(examples), int(options["seed"]))
                for i in range(batch_size)
            ]
            batch = [examples[i] for i in indices]
            with accelerator.accumulate(wrapped):
                soft, aux = wrapped(*pad_items([encoded[i] for i in indices], lm.device))
                sums, counts = batch_loss(
                    lm, soft, batch, max_target_tokens=int(options["max_target_tokens"])
                )
                loss = sums.sum() / counts.sum().clamp(min=1) + aux
                if margin_weight and not source.task_only and len(batch) > 1:
                    loss = loss + margin_weight * user_margin_loss(
                        lm, soft, batch, sums / counts.clamp(min=1), options
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and options.get("max_grad_norm"):
                    accelerator.clip_grad_norm_(trainable, float(options["max_grad_norm"]))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += loss.item() / accumulation
        seen += per_step
        step += 1
        recent = [*recent, step_loss][-20:]
        wall = elapsed_before + time.monotonic() - start
        bar.update(1)
        rate = (seen - seen_at_start) / max(time.monotonic() - start, 1e-9)
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}", ex_s=f"{rate:.2f}")
        record: dict[str, Any] = {
            "step": step,
            "loss": round(step_loss, 4),
            "examples_seen": seen,
            "wall_s": round(wall, 1),
        }
        val_every = int(options.get("val_every") or 0)
        if on_validate is not None and val_every and step % val_every == 0 and step < max_steps:
            record["validation"] = on_validate(step)
            logger.info("step %d validation %s", step, json.dumps(record["validation"]))
        history.append(record)
        save_every = int(options.get("save_every") or 0)
        out_of_time = _out_of_time(accelerator, start, options.get("time_budget"))
        if accelerator.is_main_process and (
            (save_every and step % save_every == 0) or step == max_steps or out_of_time
        ):
            save_state(
                state_dir,
                accelerator.unwrap_model(wrapped),
                optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
                {"step": step, "examples_seen": seen, "wall_s": round(wall, 1), "history": history},
            )
        if out_of_time:
            logger.info("time budget reached at step %d of %d", step, max_steps)
            break
    bar.close()
    tail = [h["loss"] for h in history[-20:]]
    return LoopResult(
        step,
        seen,
        sum(tail) / max(len(tail), 1),
        elapsed_before + time.monotonic() - start,
        history,
    )


def _out_of_time(accelerator: Any, start: float, budget_minutes: float | None) -> bool:
    """Whether this run's --time-budget is spent; every process gets the same answer, so
    all stop after the same step."""
    if not budget_minutes:
        return False
    spent = torch.tensor(float(time.monotonic() - start > 60 * float(budget_minutes)))
    return bool(accelerator.reduce(spent.to(accelerator.device), reduction="max").item())


def _example_index(position: int, n: int, seed: int) -> int:
    """The example at global ``position`` of the endless, per-epoch shuffled sequence."""
    epoch, within = divmod(position, n)
    return _epoch_order(n, seed + epoch)[within]


_ORDER_CACHE: dict[tuple[int, int], list[int]] = {}


def _epoch_order(n: int, seed: int) -> list[int]:
    key = (n, seed)
    if key not in _ORDER_CACHE:
        order = list(range(n))
        random.Random(seed).shuffle(order)
        _ORDER_CACHE.clear()
        _ORDER_CACHE[key] = order
    return _ORDER_CACHE[key]


# --- the stage ---------------------------------------------------------------------------------


def encode_examples(
    examples: Sequence[Example],
    cache: Any,
    quantize: Callable[[Tensor], Tensor] | None,
    *,
    style_dim: int,
    progress: bool,
) -> list[Encoded]:
    """Each example's history items (quantized when ``quantize`` is given) and query vector,
    with style features; every distinct text is encoded once."""
    texts = list(dict.fromkeys(t for e in examples for t in e.history))
    vectors = with_style(cache.get(texts, progress=progress), texts, style_dim)
    if quantize is not None:
        vectors = quantize(vectors)
    row = {t: i for i, t in enumerate(texts)}
    messages = [e.user_message for e in examples]
    queries = with_style(cache.get(messages, progress=progress), messages, style_dim)
    return [
        Encoded(vectors[[row[t] for t in e.history]], queries[i]) for i, e in enumerate(examples)
    ]


def starting_prompt(folder: str | Path, num_tokens: int, hidden_size: int) -> Tensor:
    """The vectors (T, H) of the task-only checkpoint in ``folder``, checked to fit a run
    with ``num_tokens`` soft tokens of ``hidden_size``."""
    from curp_chain.errors import CurpError
    from curp_chain.task_prompt import load_task_prompt

    vectors = load_task_prompt(folder).vectors.detach()
    if tuple(vectors.shape) != (num_tokens, hidden_size):
        raise CurpError(
            f"--start-prompt {folder} holds {vectors.shape[0]} soft tokens of width "
            f"{vectors.shape[1]}; this run needs {num_tokens} of width {hidden_size}"
        )
    return vectors


def run_projector_stage(options: dict[str, Any]) -> dict[str, Any]:
    """Train (or, with ``validate_only``, only validate) per the `curp train projector`
    options; writes the checkpoint to ``out`` and returns a summary for provenance."""
    from accelerate import Accelerator

    from curp_chain.checkpoint import load_checkpoint, save_checkpoint
    from curp_chain.defaults import open_hf_backend
    from curp_chain.encoder import SentenceEncoder
    from curp_chain.errors import CurpError
    from curp_chain.task_prompt import (
        TaskPrompt,
        TaskPromptConfig,
        load_task_prompt,
        save_task_prompt,
    )
    from curp_chain.training.codebook import EmbeddingCache, embedding_cache_path
    from curp_chain.training.data import default_cache_dir, load_lamp7_validation

    started = time.monotonic()
    if options.get("threads"):
        torch.set_num_threads(int(options["threads"]))
    seed = int(options["seed"])
    torch.manual_seed(seed)
    accelerator = Accelerator(gradient_accumulation_steps=int(options["grad_accum"]))
    main = accelerator.is_local_main_process
    task_only = bool(options["task_only"])
    validate_only = bool(options.get("validate_only"))

    user_model = load_checkpoint(options["init"]) if options.get("init") else None
    if user_model is None and not task_only:
        raise CurpError("--init is required: the checkpoint written by `curp train codebook`")
    if user_model is not None and user_model.config.trained and not validate_only:
        logger.info("continuing from a trained checkpoint %s", options["init"])
    lm: Any = open_hf_backend(options.get("model_path"), device=str(accelerator.device))
    llm_parameters = sum(p.numel() for p in lm.model.parameters())
    max_history = user_model.config.max_history_items if user_model else int(options["max_history"])

    tokens = user_model.config.num_soft_tokens if user_model else int(options["num_soft_tokens"])
    start_prompt = (
        starting_prompt(options["start_prompt"], tokens, lm.hidden_size)
        if options.get("start_prompt")
        else None
    )
    if task_only:
        torch.manual_seed(seed)
        task_prompt = TaskPrompt(
            TaskPromptConfig(
                llm_id=lm.model_id,
                llm_hidden_size=lm.hidden_size,
                num_tokens=tokens,
                init_rms=user_model.config.soft_token_rms if user_model else 0.13,
            )
        )
        if options.get("task_init") == "base":
            if user_model is None:
                raise CurpError("--task-init base starts from the --init checkpoint: pass --init")
            with torch.no_grad():
                task_prompt.vectors.copy_(user_model.projector.base)
        if start_prompt is not None:
            with torch.no_grad():
                task_prompt.vectors.copy_(start_prompt)
        module: nn.Module = task_prompt
    else:
        assert user_model is not None
        if user_model.config.llm_hidden_size != lm.hidden_size:
            raise CurpError(
                f"the --init checkpoint makes {user_model.config.llm_hidden_size}-d soft tokens; "
                f"the LLM's hidden size is {lm.hidden_size}"
            )
        if start_prompt is not None:
            if user_model.config.trained:
                raise CurpError(
                    "--start-prompt replaces the base prompt of an untrained checkpoint (the one "
                    "`curp train codebook` writes); a trained checkpoint's history offset was "
                    "learned around its own base"
                )
            with torch.no_grad():
                user_model.projector.base.copy_(start_prompt)
        module = user_model.train()
        user_model.quantizer.requires_grad_(bool(options["train_codebook"]))
    source = SoftTokenSource(
        module,
        train_codebook=bool(options["train_codebook"]),
        codebook_loss_weight=float(options.get("codebook_loss_weight", 1.0)),
        shared_offset_weight=float(options.get("shared_offset_weight") or 0.0),
    )
    source.to(accelerator.device)

    # The encoder runs where the LLM trains: on a GPU, new texts are encoded in seconds.
    encoder = SentenceEncoder(
        encoder_id=user_model.config.encoder_id if user_model else None,
        device=str(accelerator.device),
    )
    cache = EmbeddingCache(
        embedding_cache_path(options["cache_dir"] or default_cache_dir(), encoder.encoder_id),
        encoder,
    )
    quantize = None
    if user_model is not None and not options["train_codebook"]:
        quantizer = user_model.quantizer

        def quantize(vectors: Tensor) -> Tensor:
            with torch.no_grad():
                # The quantizer lives wherever the model trains; vectors are kept on the CPU.
                device = quantizer.prototypes.device
                return quantizer.decode(quantizer.encode(vectors.to(device))).cpu()

    # Validation data: LaMP-7 users (their gold tweets are read only here).
    generic = None
    if options.get("examples"):
        generic = load_generic(
            options["examples"],
            options["histories"],
            max_history=max_history,
            held_out_fraction=float(options["held_out_fraction"]),
            seed=seed,
            persona_fraction=float(options.get("persona_fraction") or 0.0),
            val_examples_path=options.get("val_examples"),
        )
        val_examples = generic.validation
    else:
        val_examples = validation_examples(
            load_lamp7_validation(options["data_dir"]), max_history=max_history
        )
    if options.get("final_val_users"):
        val_examples = val_examples[: int(options["final_val_users"])]
    val_encoded = (
        encode_examples(
            val_examples, cache, quantize, style_dim=user_model.config.style_dim, progress=main
        )
        if user_model is not None
        else [Encoded(torch.zeros(1, 384), torch.zeros(384)) for _ in val_examples]
    )
    task_source = None
    if task_only:
        task_source = source
    elif options.get("task_prompt"):
        task_source = SoftTokenSource(load_task_prompt(options["task_prompt"])).to(lm.device)
    # The plain prompt does not change during training: the CURP run scores it once, at the
    # end; the task-only run leaves it to the CURP run.
    if task_only:
        conditions = interim_conditions = ["task"]
    else:
        conditions = ["own", "shuffled", "none"] + (["task"] if task_source else [])
        interim_conditions = ["own", "shuffled"]
    val_users = int(options["val_users"])

    def run_validation(subset: int | None, with_conditions: Sequence[str]) -> dict[str, Any]:
        source.eval()
        count = len(val_examples) if subset is None else min(subset, len(val_examples))
        result = validate(
            lm,
            None if task_only else source,
            task_source,
            val_examples[:count],
            val_encoded[:count],
            conditions=with_conditions,
            batch_size=int(options["val_batch_size"]),
            max_target_tokens=int(options["max_target_tokens"]),
            seed=seed,
            progress=main,
        )
        source.train()
        return result

    trainable = sum(p.numel() for p in source.parameters() if p.requires_grad)
    summary: dict[str, Any] = {
        "trainable_parameters": trainable,
        "trainable_percent_of_llm": round(100 * trainable / llm_parameters, 3),
        "llm_parameters": llm_parameters,
        "device": str(accelerator.device),
        "processes": accelerator.num_processes,
    }
    if main:
        logger.info(
            "trainable parameters: %d (%.3f%% of the LLM's %d)",
            trainable,
            100 * trainable / llm_parameters,
            llm_parameters,
        )

    if validate_only:
        summary["validation"] = run_validation(None, conditions)
        return summary

    if generic is not None:
        examples = generic.train
        data: dict[str, Any] = {**generic.summary, "training": "--examples, held-out users left out"}
    else:
        examples, data = lamp7_training_data(options, max_history=max_history, seed=seed)
    if options.get("max_examples"):
        examples = examples[: int(options["max_examples"])]
    if not examples:
        raise CurpError(
            "no training examples: "
            + (
                "no training user of --examples has a history besides the target"
                if generic is not None
                else f"{data['sources']} holds no accepted sources for the training users; "
                "run `curp train sources` first"
            )
        )
    if main:
        logger.info(
            "%d training examples from %d users", len(examples), len({e.user_id for e in examples})
        )
    encoded = (
        encode_examples(
            examples, cache, quantize, style_dim=user_model.config.style_dim, progress=main
        )
        if user_model is not None and not task_only
        else [Encoded(torch.zeros(1, 384), torch.zeros(384)) for _ in examples]
    )

    out = Path(options["out"])
    state_dir = Path(options["state_dir"] or out / "training-state")

    def on_validate(step: int) -> dict[str, Any]:
        return run_validation(val_users, interim_conditions)

    result = train_loop(
        accelerator=accelerator,
        lm=lm,
        source=source,
        examples=examples,
        encoded=encoded,
        options=options,
        state_dir=state_dir,
        on_validate=on_validate,
    )
    final = run_validation(None, conditions)
    source.eval()
    samples = (
        []
        if task_only
        else generation_sample(
            lm,
            source,
            val_examples[: int(options["samples"])],
            val_encoded[: int(options["samples"])],
        )
    )
    summary.update(
        {
            "data": {
                **data,
                "examples": len(examples),
                "users": len({e.user_id for e in examples}),
                "validation": f"{len(val_examples)} examples, gold per-token loss",
            },
            "steps": result.steps,
            "examples_seen": result.examples_seen,
            "epochs": round(result.examples_seen / len(examples), 2),
            "wall_s": round(result.wall_s, 1),
            "total_wall_s": round(time.monotonic() - started, 1),
            "final_train_loss": round(result.train_loss, 4),
            "validation": final,
        }
    )
    if main:
        logger.info("final validation %s", json.dumps(final))
        for sample in samples:
            logger.info("sample: %s", json.dumps(sample, ensure_ascii=False))
        (state_dir / "history.jsonl").write_text(
            "".join(json.dumps(h) + "\n" for h in result.history)
        )
        (state_dir / "samples.json").write_text(json.dumps(samples, indent=2, ensure_ascii=False))
        unwrapped = accelerator.unwrap_model(source).module
        if task_only:
            unwrapped.config = unwrapped.config.model_copy(
                update={
                    "trained": True,
                    "provenance": {**options.get("provenance", {}), **summary},
                }
            )
            save_task_prompt(unwrapped, out)
        else:
            previous = dict(unwrapped.config.provenance)
            codebook = dict(previous.get("codebook", previous))
            if previous.get("command"):
                codebook["command"] = previous["command"]
            provenance = {**options.get("provenance", {}), **summary, "codebook": codebook}
            unwrapped.config = unwrapped.config.model_copy(
                update={"trained": True, "provenance": provenance}
            )
            save_checkpoint(unwrapped.eval(), out)
    return summary


def lamp7_training_data(
    options: dict[str, Any], *, max_history: int, seed: int
) -> tuple[list[Example], dict[str, Any]]:
    """The LaMP-7 adapter's training examples: PAN training users with accepted paraphrase
    sources, and what to record about them."""
    from curp_chain.training.data import (
        default_cache_dir,
        default_data_dir,
        load_pan,
        split_users,
        user_order,
    )
    from curp_chain.training.sources import SourceCache

    users = load_pan(options["data_dir"], max_users=options["max_users"])
    train_users, _ = split_users(users, float(options["held_out_fraction"]), seed)
    sources_path = Path(
        options["sources"]
        or Path(options["cache_dir"] or default_cache_dir()) / "sources-smollm2.jsonl"
    )
    source_cache = SourceCache(sources_path, max_lines=options.get("max_source_lines"))
    accepted = source_cache.accepted()
    examples = training_examples(
        user_order(train_users, seed),
        accepted,
        max_history=max_history,
        cleanup_fraction=float(options["cleanup_fraction"]),
        persona_fraction=float(options.get("persona_fraction") or 0.0),
        seed=seed,
    )
    data = {
        "data_dir": str(options["data_dir"] or default_data_dir()),
        "training": "pan19/humans.jsonl training users (LaMP-7 users never trained on)",
        "sources": str(sources_path),
        "source_lines": options.get("max_source_lines") or len(source_cache),
        "accepted_sources": len(accepted),
        "validation_data": "lamp7",
    }
    return examples, data
