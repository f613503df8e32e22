"""Stage 2's resumable state: trainable weights, optimizer moments and counters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


def save_state(
    folder: Path, source: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
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
    folder: Path, source: nn.Module, optimizer: torch.optim.Optimizer
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
