"""An untrained CURP checkpoint: the starting point of training, and a labelled placeholder."""

from __future__ import annotations

from pathlib import Path

import torch

from curp_chain.model.checkpoint import save_checkpoint
from curp_chain.model.config import CurpConfig
from curp_chain.model.user_model import CurpUserModel


def initial_model(config: CurpConfig, seed: int = 0) -> CurpUserModel:
    """A freshly initialised user model, the same for the same config and seed."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return CurpUserModel(config)
    finally:
        torch.random.set_rng_state(generator_state)


def write_untrained_checkpoint(
    folder: str | Path, config: CurpConfig | None = None, seed: int = 0
) -> Path:
    config = config or CurpConfig(
        trained=False,
        provenance={"note": f"untrained initialisation (seed {seed}): not personalized yet"},
    )
    return save_checkpoint(initial_model(config, seed), folder)
