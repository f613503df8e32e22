"""Does the history offset's shift between PAN 2019 and LaMP-7 users cost CURP its lead?

CURP's soft tokens are a learned base prompt plus a history offset minus a centre: the
running mean of the offset over the PAN 2019 training users. LaMP-7 users write differently,
so their offsets share a part of their own. This benchmark measures that part and scores,
with the gold per-token loss of the training validation, three variants of the checkpoint
on LaMP-7 users whose profiles did not shape the variants:

- ``bundled``: the checkpoint as it is;
- ``lamp-centre``: the centre replaced by the mean offset of the other LaMP-7 users
  (their profiles and requests only, never their gold tweets);
- ``task-base``: that, with the base prompt replaced by the task-only prompt's vectors;

next to the task-only prompt itself. The first ``--users`` users are scored; the centre
comes from the rest.

    python benchmarks/offset_shift.py --data-dir ../shared/data --users 150 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any

import torch

from curp_chain.data.users import default_cache_dir
from curp_chain.eval.methods import DEFAULT_TASK_CHECKPOINT
from curp_chain.model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.model.task_prompt import load_task_prompt
from curp_chain.model.user_model import CurpUserModel
from curp_chain.runtime.defaults import open_hf_backend
from curp_chain.tasks.lamp7 import load_lamp7_validation
from curp_chain.training.batching import encode_examples, pad_items
from curp_chain.training.codebook import EmbeddingCache, embedding_cache_path
from curp_chain.training.examples import validation_examples
from curp_chain.training.loss import SoftTokenSource
from curp_chain.training.validation import validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="shared data folder (with lamp7/)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--task-prompt", default=str(DEFAULT_TASK_CHECKPOINT))
    parser.add_argument("--users", type=int, default=150, help="users scored (default 150)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_checkpoint(args.checkpoint).eval()
    task = load_task_prompt(args.task_prompt)
    examples = validation_examples(
        load_lamp7_validation(args.data_dir), max_history=model.config.max_history_items
    )
    encoder = SentenceEncoder(encoder_id=model.config.encoder_id)
    cache = EmbeddingCache(embedding_cache_path(default_cache_dir(), encoder.encoder_id), encoder)
    quantizer = model.quantizer

    def quantize(vectors: torch.Tensor) -> torch.Tensor:
        return quantizer.decode(quantizer.encode(vectors))

    encoded = encode_examples(
        examples, cache, quantize, style_dim=model.config.style_dim, progress=True
    )
    scored, reference = slice(0, args.users), slice(args.users, None)

    with torch.no_grad():
        offsets = torch.stack(
            [history_offset(model, *pad_items([e], torch.device("cpu"))) for e in encoded]
        )
    lamp_centre = offsets[reference].mean(0)
    training_centre = model.projector.offset_mean
    report: dict[str, Any] = {
        "training_centre_norm": norm(training_centre),
        "lamp_centre_norm": norm(lamp_centre),
        "lamp_minus_training_centre_norm": norm(lamp_centre - training_centre),
        "per_user_part_norm": round(float((offsets - lamp_centre).norm(dim=(1, 2)).mean()), 3),
        "base_norm": norm(model.projector.base),
        "task_prompt_norm": norm(task.vectors),
        "base_minus_task_prompt_norm": norm(model.projector.base - task.vectors),
    }
    print(json.dumps(report, indent=2))

    variants = {"bundled": model, "lamp-centre": copy.deepcopy(model)}
    variants["lamp-centre"].projector.offset_mean.copy_(lamp_centre)
    variants["task-base"] = copy.deepcopy(variants["lamp-centre"])
    with torch.no_grad():
        variants["task-base"].projector.base.copy_(task.vectors)

    lm = open_hf_backend(None, device="cpu")
    task_source = SoftTokenSource(task).eval()
    rows = {}
    for name, variant in variants.items():
        result = validate(
            lm,
            SoftTokenSource(variant).eval(),
            task_source,
            examples[scored],
            encoded[scored],
            conditions=["own", "task"] if name == "bundled" else ["own"],
            batch_size=16,
            max_target_tokens=64,
            progress=True,
        )
        rows[name] = result["own"]
        if name == "bundled":
            rows["task-only prompt"] = result["task"]
    print(f"\nGold per-token loss, LaMP-7 users 1-{args.users}:\n")
    print("| soft tokens | gold loss |\n|---|---|")
    for name, loss in rows.items():
        print(f"| {name} | {loss:.4f} |")


def history_offset(
    model: CurpUserModel, items: torch.Tensor, mask: torch.Tensor, query: torch.Tensor
) -> torch.Tensor:
    """The user's offset before centring: soft tokens minus the base, plus the centre."""
    soft = model.soft_tokens(items, mask, query)[0]
    return soft - model.projector.base + model.projector.offset_mean


def norm(tensor: torch.Tensor) -> float:
    return round(float(tensor.norm()), 3)


if __name__ == "__main__":
    main()
