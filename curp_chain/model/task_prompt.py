"""A task-only soft prompt: the same number of soft tokens as CURP, with no user input.

It is the baseline that separates personalization from task adaptation: trained on the
same examples and budget as CURP, it shows how far plain prompt tuning gets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from curp_chain.errors import CheckpointError
from curp_chain.locations import DEFAULT_LLM_ID

TASK_PROMPT_KIND = "task-prompt"


class TaskPromptConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = TASK_PROMPT_KIND
    llm_id: str = DEFAULT_LLM_ID
    llm_hidden_size: int = Field(576, gt=0)
    num_tokens: int = Field(5, gt=0)
    init_rms: float = Field(0.13, gt=0)
    trained: bool = False
    provenance: dict[str, Any] = Field(default_factory=dict)


class TaskPrompt(nn.Module):
    """``num_tokens`` free soft vectors, the same for every user."""

    def __init__(self, config: TaskPromptConfig):
        super().__init__()
        self.config = config
        self.vectors = nn.Parameter(
            torch.randn(config.num_tokens, config.llm_hidden_size) * config.init_rms
        )

    def forward(self) -> torch.Tensor:
        """(T, H) soft tokens."""
        return self.vectors


def save_task_prompt(prompt: TaskPrompt, folder: str | Path) -> Path:
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {"vectors": prompt.vectors.detach().cpu().contiguous()}, str(path / "model.safetensors")
    )
    (path / "config.json").write_text(prompt.config.model_dump_json(indent=2) + "\n")
    return path


def is_task_prompt(folder: str | Path) -> bool:
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        return False
    return bool(json.loads(config_path.read_text()).get("kind") == TASK_PROMPT_KIND)


def load_task_prompt(folder: str | Path) -> TaskPrompt:
    path = Path(folder)
    if not is_task_prompt(path):
        raise CheckpointError(f"{path} is not a task-prompt checkpoint (config.json kind)")
    config = TaskPromptConfig.model_validate_json((path / "config.json").read_text())
    prompt = TaskPrompt(config)
    state = load_file(str(path / "model.safetensors"))
    if tuple(state["vectors"].shape) != (config.num_tokens, config.llm_hidden_size):
        raise CheckpointError(f"{path}: vectors shape does not match its config")
    prompt.load_state_dict(state)
    return prompt.eval()
