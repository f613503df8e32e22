"""Can SmolLM2-135M learn a real user from a few teacher answers? Per-user soft prompts.

    python benchmarks/per_user_prompts.py [--train-users 60] [--minutes 12] [--json PATH]

The issue's free per-user vectors made SmolLM2 answer for eight users with unmistakable
histories. This asks the same of real users (PAN, Reddit, Enron), with no encoder and no
codebook in the way: each of the first N training users gets its own offset on the assist
task prompt (`smollm2-135m-assist-task`), trained on that user's kept teacher answers (about
5 each: `python -m curp_chain.training.teacher --train-users 60 --train-per-user 12`). Then
each user asks one held-out request, answered greedily on llama.cpp with their own prompt,
with another user's, and with the task prompt alone, and the replies are scored as `curp eval
assist` scores them, among the N users. If even these prompts do not identify their user,
the projector is not what is missing.
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
from tqdm.auto import tqdm

from curp_chain.data.users import default_data_dir
from curp_chain.eval.assist import AssistScorer, summary
from curp_chain.interfaces.protocols import GenerationParams
from curp_chain.model.checkpoint import ASSIST_CHECKPOINT
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.model.task_prompt import load_task_prompt
from curp_chain.runtime.defaults import open_hf_backend, open_llamacpp_backend
from curp_chain.runtime.prompt import ChatTurn, build_soft_prompt
from curp_chain.tasks.assist import (
    candidates,
    interleave_users,
    load_requests,
    load_users,
    requests_for,
)
from curp_chain.tasks.assist_task import ASSIST_SYSTEM, answers_dir, kept_answers
from curp_chain.tasks.base import ProfileItem, TaskExample
from curp_chain.training.examples import Example, derangement
from curp_chain.training.loss import batch_loss

SYSTEM = (ChatTurn("system", ASSIST_SYSTEM),)


def train_offsets(
    lm: Any, base: torch.Tensor, examples: list[Example], users: list[str], args: Any
) -> torch.Tensor:
    """(U, T, H) per-user offsets on ``base``, trained on each user's answers."""
    offsets = torch.zeros(len(users), *base.shape, requires_grad=True)
    index = {u: i for i, u in enumerate(users)}
    optimizer = torch.optim.Adam([offsets], lr=args.lr)
    start, step, losses = time.monotonic(), 0, []
    bar = tqdm(total=int(args.minutes * 60), unit="s", desc="per-user prompts")
    while time.monotonic() - start < args.minutes * 60:
        batch = random.Random(step).sample(examples, min(8, len(examples)))
        rows = torch.tensor([index[e.user_id] for e in batch])
        sums, counts = batch_loss(lm, base + offsets[rows], batch, max_target_tokens=64)
        loss = sums.sum() / counts.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        bar.n = int(time.monotonic() - start)
        bar.set_postfix(step=step, loss=f"{statistics.fmean(losses[-20:]):.3f}")
    bar.close()
    first, last = statistics.fmean(losses[:20]), statistics.fmean(losses[-20:])
    print(f"{step} steps, loss {first:.3f} -> {last:.3f}")
    return offsets.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-users", type=int, default=60)
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    users = interleave_users(load_users(default_data_dir(), "train"))[: args.train_users]
    by_id = {u.user_id: u for u in users}
    requests = {r.id: r for r in load_requests("all")}
    kept = [r for r in kept_answers(answers_dir(), "train") if r["user_id"] in by_id]
    examples = [
        Example(r["user_id"], (), requests[r["request_id"]].text, r["answer"], SYSTEM) for r in kept
    ]
    ids = [u.user_id for u in users]
    base = load_task_prompt(f"{ASSIST_CHECKPOINT}-task").vectors.detach()
    offsets = train_offsets(open_hf_backend(), base, examples, ids, args)
    backend = open_llamacpp_backend(n_threads=args.threads)
    params = GenerationParams(max_tokens=64, temperature=0.0, stop=("\n\n",))
    held_out = load_requests("held_out")
    asked = [requests_for(u, held_out, 1)[0] for u in ids]
    other = derangement(len(ids), 0)
    variants = {
        "task prompt (user-blind)": lambda i: base,
        "own per-user prompt": lambda i: base + offsets[i],
        "another user's prompt": lambda i: base + offsets[other[i]],
    }
    tests = [
        TaskExample(
            id=str(i),
            user_id=u,
            messages=(*SYSTEM, ChatTurn("user", asked[i].text)),
            gold="",
            profile=tuple(ProfileItem(p.id, p.text) for p in candidates(by_id[u])),
            source="",
        )
        for i, u in enumerate(ids)
    ]
    scorer = AssistScorer(tests, SentenceEncoder())
    result: dict = {"users": len(ids), "chance": scorer.chance, "answers": len(examples)}
    for name, soft in variants.items():
        replies = []
        for i, test in enumerate(tqdm(tests, desc=name)):
            vectors = soft(i).numpy().astype(np.float32)
            prompt = build_soft_prompt(
                backend.chat_template, list(test.messages), vectors, backend.special_tokens
            )
            replies.append("".join(c.text for c in backend.stream(prompt, params)).strip())
        result[name] = summary(scorer.score(replies, tests))
        result[name]["samples"] = [
            {"user": t.user_id, "request": t.input, "reply": r}
            for t, r in list(zip(tests, replies, strict=True))[:5]
        ]
        shown = {
            m: round(result[name][m], 3) for m in ("top1", "top1_lexical", "gain", "on_request")
        }
        print(name, shown, flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
