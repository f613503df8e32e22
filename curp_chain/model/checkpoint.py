"""Checkpoints: a folder with model.safetensors and config.json. No pickle anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from curp_chain.errors import CheckpointError, IncompatibleCheckpointError
from curp_chain.model.config import CurpConfig
from curp_chain.model.user_model import CurpUserModel

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

CHECKPOINTS = Path(__file__).parents[1] / "checkpoints"
"""Where the checkpoints for SmolLM2-135M-Instruct + all-MiniLM-L6-v2 are bundled (package
data in ``curp_chain/checkpoints/``)."""

DEFAULT_CHECKPOINT = CHECKPOINTS / "smollm2-135m-mix"
"""The default checkpoint: trained on a mix of Reddit replies, email subject lines and tweet
rewrites (docs/training.md, "The mix checkpoints"), so its soft tokens serve those kinds of
request and ordinary chat (under its ``chat_system_message``)."""

ASSIST_CHECKPOINT = CHECKPOINTS / "smollm2-135m-assist"
"""The checkpoint of everyday requests (``CurpChatModel`` routes them here): it continues
the default one on teacher answers to everyday requests (docs/training.md, "The assist
checkpoint"), so its soft tokens shape an assistant's answer *to* the user. It shares the
default's codebook, so stored codes serve both."""

LAMP7_CHECKPOINT = CHECKPOINTS / "smollm2-135m-minilm"
"""The LaMP-7 checkpoint the mix one continues (tweet rewriting only; the default before the
mix). It shares the mix's codebook, so stored codes serve both."""


def save_checkpoint(model: CurpUserModel, folder: str | Path) -> Path:
    """Write the model's weights and config to ``folder`` (created if needed)."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "curp-chain"})
    (path / CONFIG_FILE).write_text(model.config.model_dump_json(indent=2) + "\n")
    return path


def read_config(folder: str | Path) -> CurpConfig:
    path = Path(folder)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(
            f"{path} is not a curp-chain checkpoint: {CONFIG_FILE} is missing "
            f"(a checkpoint folder holds {WEIGHTS_FILE} and {CONFIG_FILE})"
        )
    try:
        return CurpConfig.model_validate(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, ValidationError) as error:
        raise CheckpointError(f"{config_path} is not a valid curp-chain config: {error}") from None


def check_compatible(
    config: CurpConfig,
    *,
    llm_id: str | None = None,
    llm_hidden_size: int | None = None,
    encoder_id: str | None = None,
    encoder_dim: int | None = None,
) -> None:
    """Raise IncompatibleCheckpointError listing every mismatch with the parts in use."""
    problems = []
    if llm_hidden_size is not None and config.llm_hidden_size != llm_hidden_size:
        problems.append(
            f"LLM hidden size: checkpoint {config.llm_hidden_size}, model {llm_hidden_size}"
        )
    if llm_id is not None and config.llm_id != llm_id:
        problems.append(f"LLM: checkpoint {config.llm_id!r}, model {llm_id!r}")
    if encoder_dim is not None and config.encoder_dim != encoder_dim:
        problems.append(f"encoder width: checkpoint {config.encoder_dim}, encoder {encoder_dim}")
    if encoder_id is not None and config.encoder_id != encoder_id:
        problems.append(f"encoder: checkpoint {config.encoder_id!r}, encoder {encoder_id!r}")
    if problems:
        how = "train one with `curp train`"
        if any(p.startswith("LLM") for p in problems):
            # Stage 1 does not depend on the LLM: stage 2 alone makes a checkpoint for another.
            how = (
                "train one for this LLM with `curp train projector --model-path <its GGUF> "
                "--init <this checkpoint>`, which keeps the checkpoint's codebook"
            )
        raise IncompatibleCheckpointError(
            "the checkpoint was made for other models (" + "; ".join(problems) + "). "
            f"Use a checkpoint trained for these models, or {how}."
        )


def load_checkpoint(folder: str | Path | None = None) -> CurpUserModel:
    """Load a checkpoint folder (the bundled default when None) in eval mode."""
    path = Path(folder) if folder is not None else DEFAULT_CHECKPOINT
    config = read_config(path)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} is missing")
    model = CurpUserModel(config)
    try:
        state = load_file(str(weights_path))
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {weights_path}: {error}") from None
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_path} does not match its config: missing {missing}, unexpected {unexpected}"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"{weights_path}: {name} has shape {tuple(tensor.shape)}, but its config "
                f"implies {expected[name]}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{weights_path}: {name} holds {bad} NaN or infinite values; the file is "
                "damaged or came from a diverged training run. Use another checkpoint."
            )
    model.load_state_dict(state)
    return model.eval()
