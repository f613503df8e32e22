"""Can one soft token made from an item's codes carry what the item is about into SmolLM2?

    python benchmarks/item_soft_token.py [--minutes 20] [--threads 1] [--state DIR] [--json PATH]

The assist checkpoint's replies do not identify their user (docs/experiments.md, 16): the
soft tokens carry no content that SmolLM2-135M puts into its answer. This measures the step
before: an item of a real user's history (PAN tweets, Reddit posts, Enron subject lines) is
encoded and quantized as at write time (the default checkpoint's encoder and codebook), one
MLP turns the decoded vector into one soft token, and SmolLM2 (frozen) is trained to write
the item back from it. Held-out items (the assist task's held-out users) are scored with
their own soft token against another item's (a derangement): the gap in nats per token is
what the token carries about its item. A few greedy reconstructions are printed to read.
``--state DIR`` keeps the MLP, its optimizer moments and the step (safetensors and JSON)
every minute: the same command continues a stopped run, for ``--minutes`` more.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from curp_chain.data.users import default_data_dir
from curp_chain.interfaces.protocols import GenerationParams
from curp_chain.model.checkpoint import load_checkpoint
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.runtime.defaults import open_hf_backend
from curp_chain.runtime.prompt import ChatTurn, build_soft_prompt
from curp_chain.tasks.assist import candidates, cut_item, load_users
from curp_chain.training.examples import Example, derangement
from curp_chain.training.loss import batch_loss
from curp_chain.training.state import load_state, save_state

SYSTEM = "Write out the note the user shares, word for word."
REQUEST = "Here is my note."


def item_texts(split: str, per_user: int, limit: int, seed: int) -> list[str]:
    """Up to ``per_user`` items of each user of the split, at most ``limit``, shuffled."""
    texts = []
    for user in load_users(default_data_dir(), split):  # type: ignore[arg-type]
        texts += [cut_item(i.text) for i in candidates(user)[-per_user:]]
    texts = [t for t in dict.fromkeys(texts) if len(t.split()) >= 4]
    random.Random(seed).shuffle(texts)
    return texts[:limit]


def quantized(texts: list[str], encoder: SentenceEncoder, model) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The item vectors as served: encoded, quantized to codes, decoded."""
    with torch.no_grad():
        vectors = model.item_vectors(encoder.encode(texts), texts)
        return model.quantizer.decode(model.quantizer.encode(vectors))


class ItemToken(nn.Module):
    def __init__(self, item_dim: int, hidden: int, out_dim: int, rms: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(item_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        self.rms = rms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        y = y / y.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6) * self.rms
        return y[:, None]  # (B, 1, H)


def examples(texts: list[str]) -> list[Example]:
    context = (ChatTurn("system", SYSTEM),)
    return [Example("item", (), REQUEST, t, context) for t in texts]


def per_token(lm, soft: torch.Tensor, batch: list[Example]) -> list[float]:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        sums, counts = batch_loss(lm, soft, batch, max_target_tokens=48)
    return (sums / counts.clamp(min=1)).tolist()


def reconstructions(lm, token: ItemToken, texts: list[str], vectors: torch.Tensor) -> list[dict]:  # type: ignore[no-untyped-def]
    """Greedy text written from each item's soft token, beside the item."""
    token.eval()
    samples = []
    params = GenerationParams(max_tokens=40, temperature=0.0)
    turns = [ChatTurn("system", SYSTEM), ChatTurn("user", REQUEST)]
    for text, vector in zip(texts, vectors, strict=True):
        with torch.no_grad():
            soft = token(vector[None])[0].numpy().astype(np.float32)
        prompt = build_soft_prompt(lm.chat_template, turns, soft, lm.special_tokens)
        written = "".join(c.text for c in lm.stream(prompt, params)).strip()
        samples.append({"item": text, "from its soft token": written})
        print(f"- {text!r}\n  -> {written!r}", flush=True)
    return samples


class HeldOutGap:
    """Held-out items' loss with their own soft token against another item's (nats/token)."""

    def __init__(self, lm, texts: list[str], vectors: torch.Tensor):  # type: ignore[no-untyped-def]
        self.lm, self.texts, self.vectors = lm, texts, vectors
        self.other = derangement(len(texts), 0)

    def __call__(self, token: ItemToken) -> dict[str, float]:
        token.eval()
        own, other = [], []
        for start in range(0, len(self.texts), 16):
            rows = list(range(start, min(start + 16, len(self.texts))))
            batch = examples([self.texts[i] for i in rows])
            own += per_token(self.lm, token(self.vectors[rows]), batch)
            other += per_token(self.lm, token(self.vectors[[self.other[i] for i in rows]]), batch)
        token.train()
        gaps = [o - s for s, o in zip(own, other, strict=True)]
        return {
            "own": statistics.fmean(own),
            "other": statistics.fmean(other),
            "gap": statistics.fmean(gaps),
            "gap_ci": 1.96 * statistics.stdev(gaps) / len(gaps) ** 0.5,
        }


def train_token(  # type: ignore[no-untyped-def]
    lm, token: ItemToken, texts: list[str], vectors: torch.Tensor, score: HeldOutGap, args
) -> dict[str, Any]:
    """Train for ``--minutes`` more, from ``--state`` when it holds a run; the held-out gap
    every 100 steps. Batches are drawn by step number, so a resumed run draws the same ones."""
    optimizer = torch.optim.AdamW(token.parameters(), lr=args.lr, weight_decay=0.0)
    record: dict[str, Any] = {"step": 0, "losses": [], "history": []}
    if args.state and (saved := load_state(args.state, token, optimizer)):
        record = saved
        print(f"resumed at step {record['step']}", flush=True)
    if not record["history"]:
        record["history"].append({"step": 0, **score(token)})
        print(record["history"][-1], flush=True)
    start = saved_at = time.monotonic()
    bar = tqdm(total=int(args.minutes * 60), unit="s", desc="training")
    while time.monotonic() - start < args.minutes * 60:
        rows = random.Random(record["step"]).sample(range(len(texts)), args.batch_size)
        batch = examples([texts[i] for i in rows])
        sums, counts = batch_loss(lm, token(vectors[rows]), batch, max_target_tokens=48)
        loss = sums.sum() / counts.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        record["losses"].append(round(float(loss), 4))
        record["step"] += 1
        bar.n = int(time.monotonic() - start)
        bar.set_postfix(step=record["step"], loss=f"{statistics.fmean(record['losses'][-20:]):.3f}")
        if record["step"] % 100 == 0:
            record["history"].append({"step": record["step"], **score(token)})
            tqdm.write(json.dumps(record["history"][-1]))
        if args.state and time.monotonic() - saved_at > 60:
            save_state(args.state, token, optimizer, record)
            saved_at = time.monotonic()
    bar.close()
    if record["history"][-1]["step"] != record["step"]:
        record["history"].append({"step": record["step"], **score(token)})
        print(record["history"][-1], flush=True)
    if args.state:
        save_state(args.state, token, optimizer, record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="to train in this run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-items", type=int, default=20000)
    parser.add_argument("--held-out", type=int, default=160)
    parser.add_argument("--state", type=Path, help="folder of a resumable run (safetensors)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    user_model = load_checkpoint()
    encoder = SentenceEncoder()
    lm = open_hf_backend()
    train = item_texts("train", 4, args.train_items, 0)
    held = item_texts("held_out", 2, args.held_out, 1)
    train_x, held_x = quantized(train, encoder, user_model), quantized(held, encoder, user_model)
    rms = user_model.config.soft_token_rms
    token = ItemToken(train_x.shape[1], 1024, lm.hidden_size, rms)
    record = train_token(lm, token, train, train_x, HeldOutGap(lm, held, held_x), args)
    samples = reconstructions(lm, token, held[:6], held_x[:6])
    result = {
        "items": {"train": len(train), "held_out": len(held)},
        "steps": record["step"],
        "batch_size": args.batch_size,
        "history": record["history"],
        "samples": samples,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
