"""Stage 2: align the user model's soft tokens with the frozen LLM (the stage runner).

The LLM and the sentence encoder stay frozen. The aggregator and projector (and, with
``train_codebook``, the prototypes) learn to lower the next-token loss of what a user wrote,
given the request and the user's other items as history. The prompt is built by
:func:`curp_chain.runtime.prompt.build_soft_prompt` and scored by
:mod:`curp_chain.runtime.scoring`, the same code the runtime and the evaluation use, so the
soft tokens sit exactly where they will be served.

With ``task_only`` the same loop trains a :class:`~curp_chain.model.task_prompt.TaskPrompt`: as
many free soft vectors as CURP has soft tokens, the same for every user, on the same
examples and budget. It is the baseline that tells personalization from task adaptation.

Validation is the gold target's per-token loss on users never trained on (held-out users of
``--examples``, ``--val-examples``, or the LaMP-7 users on the LaMP-7 adapter's data), in up
to four conditions: the user's own soft tokens, another user's (shuffled), none, and the
task-only prompt.

Training runs through ``accelerate``: one process on a CPU, and the same command on one or
more GPUs (``accelerate launch -m curp_chain.cli.train train projector ...``), where
each process takes its share of every batch and gradients are averaged across processes.

The parts live in their own modules: examples, batching, loss, loop, state, validation.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from curp_chain.errors import CurpError
from curp_chain.training.batching import Encoded, encode_examples
from curp_chain.training.examples import (
    Example,
    load_generic,
    training_examples,
    validation_examples,
)
from curp_chain.training.loop import LoopResult, train_loop
from curp_chain.training.loss import SoftTokenSource
from curp_chain.training.options import ProjectorOptions
from curp_chain.training.validation import generation_sample, validate

logger = logging.getLogger(__name__)


def starting_prompt(folder: str | Path, num_tokens: int, hidden_size: int) -> Tensor:
    """The vectors (T, H) of the task-only checkpoint in ``folder``, checked to fit a run
    with ``num_tokens`` soft tokens of ``hidden_size``."""
    from curp_chain.model.task_prompt import load_task_prompt

    vectors = load_task_prompt(folder).vectors.detach()
    if tuple(vectors.shape) != (num_tokens, hidden_size):
        raise CurpError(
            f"--start-prompt {folder} holds {vectors.shape[0]} soft tokens of width "
            f"{vectors.shape[1]}; this run needs {num_tokens} of width {hidden_size}"
        )
    return vectors


# --- what trains -------------------------------------------------------------------------------


def embedding_rms(lm: Any) -> float:
    """Mean root-mean-square of the LLM's token-embedding rows: the scale soft tokens start
    at (0.13 for SmolLM2-135M, 0.017 for Qwen2.5-0.5B)."""
    weight = lm.model.get_input_embeddings().weight.detach().float()
    return round(float(weight.pow(2).mean(1).sqrt().mean()), 4)


def for_llm(user_model: Any, lm: Any, options: ProjectorOptions) -> Any:
    """The --init checkpoint as a start for this run's LLM.

    Stage 1 does not depend on the LLM, so a checkpoint made for another one (another id or
    hidden size: a trained checkpoint of another LLM, or a `train codebook` folder, which
    records the default LLM) lends its codebook only. The aggregator and projector start
    afresh from the seed, with soft tokens at the scale of this LLM's token embeddings.
    Codes already stored stay valid: the codebook is the same.
    """
    from curp_chain.model.checkpoint import check_compatible
    from curp_chain.training.initialize import initial_model

    config = user_model.config
    if config.llm_id == lm.model_id and config.llm_hidden_size == lm.hidden_size:
        return user_model
    if options.validate_only:  # nothing would train the fresh projector
        check_compatible(config, llm_id=lm.model_id, llm_hidden_size=lm.hidden_size)
    logger.info(
        "--init %s was made for %s (%d-d soft tokens): keeping its codebook, starting the "
        "aggregator and projector afresh for %s (%d-d)",
        options.init, config.llm_id, config.llm_hidden_size, lm.model_id, lm.hidden_size,
    )  # fmt: skip
    previous = dict(config.provenance)
    codebook = dict(previous.get("codebook", previous))
    codebook.update({"from_checkpoint": str(options.init), "from_llm": config.llm_id})
    fresh = initial_model(
        config.model_copy(
            update={
                "llm_id": lm.model_id,
                "llm_hidden_size": lm.hidden_size,
                "soft_token_rms": embedding_rms(lm),
                "trained": False,
                "provenance": {"codebook": codebook},
            }
        ),
        options.seed,
    )
    fresh.quantizer.load_state_dict(user_model.quantizer.state_dict())
    return fresh


def _task_prompt_module(options: ProjectorOptions, lm: Any, user_model: Any, tokens: int) -> Any:
    from curp_chain.model.task_prompt import TaskPrompt, TaskPromptConfig

    torch.manual_seed(options.seed)
    task_prompt = TaskPrompt(
        TaskPromptConfig(
            llm_id=lm.model_id,
            llm_hidden_size=lm.hidden_size,
            num_tokens=tokens,
            init_rms=user_model.config.soft_token_rms if user_model else embedding_rms(lm),
        )
    )
    if options.task_init == "base":
        if user_model is None:
            raise CurpError("--task-init base starts from the --init checkpoint: pass --init")
        with torch.no_grad():
            task_prompt.vectors.copy_(user_model.projector.base)
    if options.start_prompt:
        with torch.no_grad():
            task_prompt.vectors.copy_(starting_prompt(options.start_prompt, tokens, lm.hidden_size))
    return task_prompt


def _user_model_module(options: ProjectorOptions, lm: Any, user_model: Any) -> Any:
    if user_model.config.llm_hidden_size != lm.hidden_size:
        raise CurpError(
            f"the --init checkpoint makes {user_model.config.llm_hidden_size}-d soft tokens; "
            f"the LLM's hidden size is {lm.hidden_size}"
        )
    if options.start_prompt:
        if user_model.config.trained:
            raise CurpError(
                "--start-prompt replaces the base prompt of an untrained checkpoint (the one "
                "`curp train codebook` writes); a trained checkpoint's history offset was "
                "learned around its own base"
            )
        tokens = user_model.config.num_soft_tokens
        start = starting_prompt(options.start_prompt, tokens, lm.hidden_size)
        with torch.no_grad():
            user_model.projector.base.copy_(start)
    module = user_model.train()
    user_model.quantizer.requires_grad_(options.train_codebook)
    return module


def trainable_source(options: ProjectorOptions, lm: Any, user_model: Any) -> SoftTokenSource:
    """What this run trains: the user model, or with --task-only a task prompt."""
    if user_model is None and not options.task_only:
        raise CurpError("--init is required: the checkpoint written by `curp train codebook`")
    tokens = user_model.config.num_soft_tokens if user_model else options.num_soft_tokens
    module: nn.Module = (
        _task_prompt_module(options, lm, user_model, tokens)
        if options.task_only
        else _user_model_module(options, lm, user_model)
    )
    return SoftTokenSource(
        module,
        train_codebook=options.train_codebook,
        codebook_loss_weight=options.codebook_loss_weight,
        shared_offset_weight=options.shared_offset_weight,
    )


def quantizing(user_model: Any, options: ProjectorOptions) -> Callable[[Tensor], Tensor] | None:
    """Frozen codebook: history vectors are encoded and decoded, as stored codes are."""
    if user_model is None or options.train_codebook:
        return None
    quantizer = user_model.quantizer

    def quantize(vectors: Tensor) -> Tensor:
        with torch.no_grad():
            # The quantizer lives wherever the model trains; vectors are kept on the CPU.
            device = quantizer.prototypes.device
            return quantizer.decode(quantizer.encode(vectors.to(device))).cpu()

    return quantize


# --- data --------------------------------------------------------------------------------------


@dataclass
class StageData:
    """Training and validation examples and what to record about them."""

    validation: list[Example]
    train: list[Example] | None
    """None until loaded (a --validate-only run never loads them)."""
    summary: dict[str, Any]
    generic: bool


def validation_data(options: ProjectorOptions, *, max_history: int) -> StageData:
    """Validation examples (and, for the generic format, the training ones read with them)."""
    from curp_chain.tasks.lamp7 import load_lamp7_validation

    if options.examples:
        assert options.histories is not None  # the options' validator checks it
        generic = load_generic(
            options.examples,
            options.histories,
            max_history=max_history,
            held_out_fraction=options.held_out_fraction,
            seed=options.seed,
            persona_fraction=options.persona_fraction,
            val_examples_path=options.val_examples,
        )
        summary = {**generic.summary, "training": "--examples, validation users left out"}
        data = StageData(generic.validation, generic.train, summary, True)
    else:
        queries = load_lamp7_validation(options.data_dir)
        data = StageData(validation_examples(queries, max_history=max_history), None, {}, False)
    if options.final_val_users:
        data.validation = data.validation[: options.final_val_users]
    return data


def lamp7_training_data(
    options: ProjectorOptions, *, max_history: int
) -> tuple[list[Example], dict[str, Any]]:
    """The LaMP-7 adapter's training examples: PAN training users with accepted paraphrase
    sources, and what to record about them."""
    from curp_chain.data.sources import SourceCache
    from curp_chain.data.users import (
        default_cache_dir,
        default_data_dir,
        load_pan,
        split_users,
        user_order,
    )

    seed = options.seed
    users = load_pan(options.data_dir, max_users=options.max_users)
    train_users, _ = split_users(users, options.held_out_fraction, seed)
    cache_dir = Path(options.cache_dir or default_cache_dir())
    sources_path = Path(options.sources or cache_dir / "sources-smollm2.jsonl")
    source_cache = SourceCache(sources_path, max_lines=options.max_source_lines)
    accepted = source_cache.accepted()
    examples = training_examples(
        user_order(train_users, seed),
        accepted,
        max_history=max_history,
        cleanup_fraction=options.cleanup_fraction,
        persona_fraction=options.persona_fraction,
        seed=seed,
    )
    if not examples:
        raise CurpError(
            f"no training examples: {sources_path} holds no accepted sources for the "
            "training users; run `curp train sources` first"
        )
    data = {
        "data_dir": str(options.data_dir or default_data_dir()),
        "training": "pan19/humans.jsonl training users (LaMP-7 users never trained on)",
        "sources": str(sources_path),
        "source_lines": options.max_source_lines or len(source_cache),
        "accepted_sources": len(accepted),
    }
    return examples, data


def training_data(
    data: StageData, options: ProjectorOptions, *, max_history: int
) -> tuple[list[Example], dict[str, Any]]:
    if data.generic:
        examples, summary = list(data.train or []), dict(data.summary)
        if not examples:
            raise CurpError(
                "no training examples: no training user of --examples has history items "
                "besides the target"
            )
    else:
        examples, summary = lamp7_training_data(options, max_history=max_history)
    if options.max_examples:
        examples = examples[: options.max_examples]
    return examples, summary


# --- the stage ---------------------------------------------------------------------------------


@dataclass
class Stage:
    """The loaded parts of a run, shared by its steps."""

    options: ProjectorOptions
    accelerator: Any
    lm: Any
    user_model: Any
    source: SoftTokenSource
    task_source: SoftTokenSource | None
    cache: Any
    quantize: Callable[[Tensor], Tensor] | None
    max_history: int

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_local_main_process)

    def encode(self, examples: Sequence[Example], *, for_training: bool = False) -> list[Encoded]:
        """Encoder vectors of the examples; the task-only run trains on none."""
        skip = self.user_model is None or (for_training and self.options.task_only)
        if skip:
            return [Encoded(torch.zeros(1, 384), torch.zeros(384)) for _ in examples]
        style_dim = self.user_model.config.style_dim
        return encode_examples(
            examples, self.cache, self.quantize, style_dim=style_dim, progress=self.main
        )

    def conditions(self) -> tuple[list[str], list[str]]:
        """(final, interim) validation conditions. The plain prompt does not change during
        training: the CURP run scores it once, at the end; the task-only run leaves it out."""
        if self.options.task_only:
            return ["task"], ["task"]
        final = ["own", "shuffled", "none"] + (["task"] if self.task_source else [])
        return final, ["own", "shuffled"]

    def validate(
        self, examples: Sequence[Example], encoded: Sequence[Encoded], conditions: Sequence[str]
    ) -> dict[str, Any]:
        self.source.eval()
        result = validate(
            self.lm,
            None if self.options.task_only else self.source,
            self.task_source,
            examples,
            encoded,
            conditions=conditions,
            batch_size=self.options.val_batch_size,
            max_target_tokens=self.options.max_target_tokens,
            seed=self.options.seed,
            progress=self.main,
        )
        self.source.train()
        return result


def open_stage(options: ProjectorOptions) -> Stage:
    """Load the LLM, the starting checkpoint, what trains, the encoder and its cache."""
    from accelerate import Accelerator

    from curp_chain.data.users import default_cache_dir
    from curp_chain.model.checkpoint import load_checkpoint
    from curp_chain.model.encoder import SentenceEncoder
    from curp_chain.model.task_prompt import load_task_prompt
    from curp_chain.runtime.defaults import open_hf_backend
    from curp_chain.training.codebook import EmbeddingCache, embedding_cache_path

    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    accelerator = Accelerator(gradient_accumulation_steps=options.grad_accum)
    user_model = load_checkpoint(options.init) if options.init else None
    if user_model is not None and user_model.config.trained and not options.validate_only:
        logger.info("continuing from a trained checkpoint %s", options.init)
    lm: Any = open_hf_backend(options.model_path, device=str(accelerator.device))
    if user_model is not None:
        user_model = for_llm(user_model, lm, options)
    source = trainable_source(options, lm, user_model)
    source.to(accelerator.device)
    task_source = source if options.task_only else None
    if options.task_prompt and not options.task_only:
        task_prompt = load_task_prompt(options.task_prompt)
        config = task_prompt.config
        if (config.llm_id, config.llm_hidden_size) != (lm.model_id, lm.hidden_size):
            # Checked before training: the final validation would fail only at the end.
            raise CurpError(
                f"--task-prompt {options.task_prompt} was made for {config.llm_id} (hidden "
                f"size {config.llm_hidden_size}); the LLM is {lm.model_id} ({lm.hidden_size}). "
                "Train a task-only prompt for this LLM (--task-only) or leave --task-prompt out."
            )
        task_source = SoftTokenSource(task_prompt).to(lm.device)
    # The encoder runs where the LLM trains: on a GPU, new texts are encoded in seconds.
    encoder = SentenceEncoder(
        encoder_id=user_model.config.encoder_id if user_model else None,
        device=str(accelerator.device),
    )
    cache_dir = options.cache_dir or default_cache_dir()
    cache = EmbeddingCache(embedding_cache_path(cache_dir, encoder.encoder_id), encoder)
    max_history = user_model.config.max_history_items if user_model else options.max_history
    return Stage(
        options, accelerator, lm, user_model, source, task_source, cache,
        quantizing(user_model, options), max_history,
    )  # fmt: skip


def _parameters(stage: Stage) -> dict[str, Any]:
    llm_parameters = sum(p.numel() for p in stage.lm.model.parameters())
    trainable = sum(p.numel() for p in stage.source.parameters() if p.requires_grad)
    if stage.main:
        logger.info(
            "trainable parameters: %d (%.3f%% of the LLM's %d)",
            trainable,
            100 * trainable / llm_parameters,
            llm_parameters,
        )
    return {
        "trainable_parameters": trainable,
        "trainable_percent_of_llm": round(100 * trainable / llm_parameters, 3),
        "llm_parameters": llm_parameters,
        "device": str(stage.accelerator.device),
        "processes": stage.accelerator.num_processes,
    }


def _save(
    stage: Stage,
    result: LoopResult,
    summary: dict[str, Any],
    samples: list[dict[str, str]],
    state_dir: Path,
    provenance: dict[str, Any],
) -> None:
    """Write the history, the samples and the trained checkpoint (main process only)."""
    from curp_chain.model.checkpoint import save_checkpoint
    from curp_chain.model.task_prompt import save_task_prompt

    logger.info("final validation %s", json.dumps(summary["validation"]))
    for sample in samples:
        logger.info("sample: %s", json.dumps(sample, ensure_ascii=False))
    (state_dir / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in result.history))
    (state_dir / "samples.json").write_text(json.dumps(samples, indent=2, ensure_ascii=False))
    unwrapped = stage.accelerator.unwrap_model(stage.source).module
    out = Path(str(stage.options.out))
    if stage.options.task_only:
        unwrapped.config = unwrapped.config.model_copy(
            update={"trained": True, "provenance": {**provenance, **summary}}
        )
        save_task_prompt(unwrapped, out)
        return
    previous = dict(unwrapped.config.provenance)
    codebook = dict(previous.get("codebook", previous))
    if previous.get("command"):
        codebook["command"] = previous["command"]
    update: dict[str, Any] = {"trained": True}
    update["provenance"] = {**provenance, **summary, "codebook": codebook}
    if stage.options.chat_system_message is not None:
        update["chat_system_message"] = stage.options.chat_system_message
    unwrapped.config = unwrapped.config.model_copy(update=update)
    save_checkpoint(unwrapped.eval(), out)


def run_projector_stage(
    options: ProjectorOptions, provenance: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Train (or, with ``validate_only``, only validate) per the `curp train projector`
    options; writes the checkpoint to ``out`` and returns a summary for provenance."""
    started = time.monotonic()
    stage = open_stage(options)
    data = validation_data(options, max_history=stage.max_history)
    val_encoded = stage.encode(data.validation)
    final_conditions, interim_conditions = stage.conditions()
    summary = _parameters(stage)
    if options.validate_only:
        summary["validation"] = stage.validate(data.validation, val_encoded, final_conditions)
        return summary

    examples, data_summary = training_data(data, options, max_history=stage.max_history)
    if stage.main:
        users = len({e.user_id for e in examples})
        logger.info("%d training examples from %d users", len(examples), users)
    encoded = stage.encode(examples, for_training=True)
    out = Path(str(options.out))
    state_dir = Path(options.state_dir or out / "training-state")
    interim = options.val_users

    def on_validate(step: int) -> dict[str, Any]:
        subset = data.validation[:interim], val_encoded[:interim]
        return stage.validate(*subset, interim_conditions)

    result = train_loop(
        accelerator=stage.accelerator, lm=stage.lm, source=stage.source, examples=examples,
        encoded=encoded, options=options, state_dir=state_dir, on_validate=on_validate,
    )  # fmt: skip
    final = stage.validate(data.validation, val_encoded, final_conditions)
    stage.source.eval()
    count = 0 if options.task_only else options.samples
    samples = generation_sample(
        stage.lm, stage.source, data.validation[:count], val_encoded[:count]
    )
    summary.update(
        {
            "data": {
                **data_summary,
                "examples": len(examples),
                "users": len({e.user_id for e in examples}),
                "validation": f"{len(data.validation)} examples, gold per-token loss",
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
    if stage.main:
        _save(stage, result, summary, samples, state_dir, provenance or {})
    return summary
