"""The options of each `curp train` stage, typed: one pydantic model per stage.

The command line is built from these models (one ``--option`` per field, its help from the
field's docstring; ``curp_chain.cli.options``), a ``--config`` file fills what the command
line left out, and a run saves the resolved model as ``train_config.json``, which repeats it.
Cross-field checks live in the models' validators, with messages that name the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StageOptions(BaseModel):
    """Options every stage takes."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    data_dir: str | None = None
    """folder with pan19/humans.jsonl and lamp7/ (default: $CURP_DATA_DIR, else
    ../shared/data beside the repository). Read only; nothing is copied."""
    cache_dir: str | None = None
    """where embeddings and paraphrase sources are cached between runs (default:
    data-cache/ in the repository)"""
    seed: int = 0
    """seed of the user split, sampling and initialisation"""
    held_out_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    """fraction of users kept out of training, chosen by a hash of the user id and seed"""
    max_users: int | None = Field(default=None, ge=1)
    """read at most this many PAN users (default: all; for quick runs)"""
    threads: int | None = Field(default=None, ge=1)
    """CPU threads for torch / llama.cpp (default: all cores)"""


class GenericDataOptions(StageOptions):
    examples: str | None = None
    """examples JSONL in the generic format (docs/training.md: one {user_id, messages,
    response, item_id?} per line); with --histories it replaces the LaMP-7/PAN data
    (default: none, the LaMP-7 adapter's PAN users and sources)"""
    histories: str | None = None
    """histories JSONL in the generic format (one {user_id, items} per line) or the URL of a
    history store (sqlite:///..., postgresql+psycopg://...); needed with --examples"""


class SourcesOptions(StageOptions):
    """`curp train sources`."""

    sources: str | None = None
    """the JSONL cache file (default: <cache-dir>/sources-smollm2.jsonl)"""
    model_path: str | None = None
    """GGUF model that paraphrases (default: SmolLM2-135M-Instruct)"""
    per_user: int = Field(default=16, ge=1)
    """target tweets chosen per training user, taken round-robin over users so a partial
    run covers as many users as possible"""
    limit: int | None = Field(default=None, ge=1)
    """paraphrase at most this many new tweets in this run"""
    time_budget: float | None = Field(default=None, gt=0)
    """stop after this many minutes (default: no limit)"""
    backend: Literal["llamacpp", "hf"] = "llamacpp"
    """llamacpp: one tweet at a time on the CPU; hf: transformers, many tweets side by side
    (--batch-size), on a CUDA GPU when one is present"""
    batch_size: int = Field(default=1, ge=1)
    """tweets paraphrased side by side with --backend hf (256 or more on a GPU)"""
    candidates: int = Field(default=0, ge=0)
    """retry a rejected greedy paraphrase up to this many times with sampling (temperature
    0.8, top-p 0.95) and keep the first accepted one"""
    shard: str = Field(default="0/1", pattern=r"^\d+/\d+$")
    """I/N: handle only every N-th tweet starting at I, to run N processes side by side on
    one cache"""

    @model_validator(mode="after")
    def _shard_in_range(self) -> SourcesOptions:
        index, count = (int(x) for x in self.shard.split("/"))
        if not 0 <= index < count:
            raise ValueError(f"--shard {self.shard}: I must be in [0, N), e.g. 0/2")
        return self


def _generic_pairing(options: GenericDataOptions) -> None:
    if options.examples and not options.histories:
        raise ValueError("--examples needs --histories: the users' items (a file or store URL)")


class CodebookOptions(GenericDataOptions):
    """`curp train codebook`."""

    out: str | None = None
    """output checkpoint folder (required)"""
    num_subspaces: int | None = Field(default=None, ge=1)
    """M: subspaces the item vector is split into (default: 17 with style features, 16 parts
    of the 384-d encoder vector and the 24 style features; 8 without)"""
    persona_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    """fraction of training users whose items are rewritten by a style persona, as `train
    projector` does (same users, same personas)"""
    style: bool = True
    """append the item's style features (casing, punctuation, mentions, emoji;
    curp_chain.model.style) to the encoder vector, as a codebook subspace of their own"""
    codebook_size: int = Field(default=64, ge=2)
    """K: prototypes per subspace"""
    max_history: int = Field(default=24, ge=1)
    """history items per user used in training and stored as the checkpoint's
    max_history_items"""
    train_users: int | None = Field(default=None, ge=1)
    """embed only the first N training users in the seeded user order, the order `train
    sources` follows (default: all)"""
    held_out_items: int = Field(default=10, ge=1)
    """items per held-out user used for the report"""
    lamp7_report_users: int | None = Field(default=None, ge=1)
    """LaMP-7 users whose profiles the report also covers (default: all 300)"""
    kmeans_iterations: int = Field(default=12, ge=1)
    """balanced k-means iterations per subspace"""
    steps: int = Field(default=1500, ge=1)
    """gradient steps after k-means"""
    batch_size: int = Field(default=1024, ge=1)
    """items per step"""
    lr: float = Field(default=1e-3, gt=0)
    """Adam learning rate"""
    usage_weight: float = Field(default=0.01, ge=0)
    """weight of the usage term KL(mean soft assignment || uniform)"""
    usage_temperature: float = Field(default=0.1, gt=0)
    """softmax temperature of the soft assignments, relative to the batch's mean squared
    distance"""
    reseed_every: int = Field(default=200, ge=1)
    """steps between re-seeding prototypes no item chose"""

    @model_validator(mode="after")
    def _checks(self) -> CodebookOptions:
        if not self.out:
            raise ValueError("--out is required (the checkpoint folder to write)")
        _generic_pairing(self)
        return self


class ProjectorOptions(GenericDataOptions):
    """`curp train projector`."""

    val_examples: str | None = None
    """examples JSONL to validate on (users' histories from --histories); default: the
    --held-out-fraction of the --examples users"""
    init: str | None = None
    """checkpoint to start from: the folder `train codebook` wrote (required unless
    --task-only; with --task-only it sets the number of soft tokens)"""
    out: str | None = None
    """output checkpoint folder (required unless --validate-only)"""
    state_dir: str | None = None
    """folder for resumable training state, history and samples (default:
    <out>/training-state)"""
    resume: bool = False
    """continue from the state in --state-dir if there is one"""
    task_only: bool = False
    """train the task-only baseline: free soft vectors, as many as the --init checkpoint's
    soft tokens, with no user input"""
    task_init: Literal["random", "base"] = "random"
    """how --task-only starts: random vectors at the soft-token scale, or the --init
    checkpoint's base prompt, which is exactly what CURP's soft tokens are before training
    (the history offset starts at zero), so the baseline and CURP start from the same
    prompt and differ only in the user information"""
    start_prompt: str | None = None
    """a task-only checkpoint to start from: with --task-only the baseline goes on training
    it; otherwise it becomes the base prompt of the untrained --init checkpoint, so CURP
    starts from exactly that prompt (the history offset starts at zero). Running both from
    one task prompt, on the same examples and budget, measures what the user information
    adds on top of it"""
    validate_only: bool = False
    """only validate --init (and --task-prompt) on the validation users"""
    task_prompt: str | None = None
    """a task-only checkpoint to add as the fourth validation condition"""
    sources: str | None = None
    """paraphrase source cache (default: <cache-dir>/sources-smollm2.jsonl)"""
    max_source_lines: int | None = Field(default=None, ge=1)
    """read only the first N lines of the source cache, to reproduce a run made when the
    cache was that long (default: all)"""
    model_path: str | None = None
    """GGUF file of the frozen LLM (default: SmolLM2-135M-Instruct)"""
    train_codebook: bool = False
    """also train the prototypes (straight-through, with the VQ loss); cached codes of
    stored histories then go stale and are re-encoded"""
    codebook_loss_weight: float = Field(default=1.0, ge=0)
    """weight of the VQ loss with --train-codebook"""
    max_history: int = Field(default=24, ge=1)
    """history items per example with --task-only and no --init (otherwise the checkpoint's
    max_history_items)"""
    num_soft_tokens: int = Field(default=5, ge=1)
    """soft tokens of a task-only prompt without --init"""
    max_examples: int | None = Field(default=None, ge=1)
    """use at most this many training examples (default: all)"""
    shared_offset_weight: float = Field(default=1.0, ge=0)
    """weight of the penalty on the mean square of each batch's mean history offset: keeps
    what all users share in the base prompt, so that serving other users than trained on
    does not shift every soft token"""
    persona_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    """fraction of training users whose texts (history and target, not the request) are all
    rewritten by one style persona: lowercase, no final punctuation, no apostrophes, a
    trailing ellipsis or exclamation marks (curp_chain.training.personas; 0 turns it off)"""
    cleanup_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    """fraction of examples also added with a clean-up variant of the tweet as source, as
    augmentation (the LaMP-7 adapter's data only)"""
    time_budget: float | None = Field(default=None, gt=0)
    """stop training after this many minutes even if --max-steps is not reached (the state
    is saved; the learning-rate schedule still follows --max-steps)"""
    max_steps: int = Field(default=200, ge=1)
    """optimizer steps to train (the step budget)"""
    batch_size: int = Field(default=8, ge=1)
    """examples per micro-batch and process"""
    grad_accum: int = Field(default=1, ge=1)
    """micro-batches accumulated per optimizer step"""
    lr: float = Field(default=1e-3, gt=0)
    """peak AdamW learning rate"""
    warmup: int = Field(default=10, ge=0)
    """linear warm-up steps before cosine decay"""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay"""
    max_grad_norm: float = Field(default=1.0, ge=0)
    """clip the gradient norm to this (0 disables)"""
    max_target_tokens: int = Field(default=64, ge=1)
    """target tokens scored per example; longer targets are cut"""
    val_every: int = Field(default=50, ge=0)
    """validate on --val-users users every this many steps; 0 only at the end"""
    val_users: int = Field(default=48, ge=1)
    """validation examples in the interim validations"""
    final_val_users: int | None = Field(default=None, ge=1)
    """validation examples in the final validation (default: all; the 300 LaMP-7 users)"""
    val_batch_size: int = Field(default=16, ge=1)
    """examples per validation batch"""
    save_every: int = Field(default=25, ge=0)
    """save resumable state every this many steps (0: only at the end)"""
    chat_system_message: str | None = None
    """the system message a personalized request without one is served with: one the
    examples' requests were trained under (saved in the checkpoint's config.json; default:
    the --init checkpoint's)"""
    user_margin_weight: float = Field(default=0.0, ge=0)
    """weight of a hinge term that asks each example's loss with its own user's soft tokens
    to beat its loss with another user's by --user-margin (0: off; doubles the cost of a
    step)"""
    user_margin: float = 0.05
    """the margin, in nats per token, of --user-margin-weight"""
    samples: int = Field(default=3, ge=0)
    """validation users to generate a sample reply for at the end"""

    @model_validator(mode="after")
    def _checks(self) -> ProjectorOptions:
        if not self.validate_only and not self.out:
            raise ValueError("--out is required (the checkpoint folder to write)")
        if self.task_init != "random" and not self.task_only:
            raise ValueError("--task-init sets how a --task-only run starts; add --task-only")
        if self.task_init != "random" and self.start_prompt:
            raise ValueError(
                "--task-init and --start-prompt both set the starting prompt; pick one"
            )
        if not self.task_only and self.batch_size < 2:
            raise ValueError(
                "--batch-size must be at least 2: CURP's history offset is centred over the "
                "users of each batch"
            )
        _generic_pairing(self)
        if (self.val_examples or self.histories) and not self.examples:
            raise ValueError(
                "--histories and --val-examples go with --examples; pass --examples too"
            )
        return self


class WordsOptions(StageOptions):
    """`curp train words`."""

    out: str
    """folder the item-word decoder is written to: the assist checkpoint it serves with"""
    checkpoint: str | None = None
    """the checkpoint whose codebook quantizes the items (default: the bundled one; the
    decoder only serves checkpoints with the same codebook)"""
    per_user: int = Field(default=20, ge=1)
    """newest items of each training user to train on"""
    held_out_items: int = Field(default=2000, ge=10)
    """items of held-out users (2 each) that score the decoder after each epoch"""
    min_users: int = Field(default=3, ge=1)
    """a vocabulary word is used by at least this many training users (no handles, names
    or typos)"""
    vocabulary: int = Field(default=8000, ge=10)
    """the most used such words kept"""
    rank: int = Field(default=128, ge=0)
    """width of the bottleneck before the vocabulary (0: a full linear map), which keeps
    the decoder small enough to ship"""
    epochs: int = Field(default=6, ge=1)
    """passes over the training items"""
    batch_size: int = Field(default=256, ge=2)
    """items per Adam step"""
    lr: float = Field(default=3e-3, gt=0)
    """Adam learning rate"""


STAGES: dict[str, type[StageOptions]] = {
    "sources": SourcesOptions,
    "codebook": CodebookOptions,
    "projector": ProjectorOptions,
    "words": WordsOptions,
}


def as_dict(options: BaseModel) -> dict[str, Any]:
    """The options as JSON-ready values (what ``train_config.json`` stores)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in options.model_dump().items()}
