"""Can SmolLM2-135M learn a real user from a few teacher answers? Per-user soft prompts.

    python benchmarks/per_user_prompts.py [--train-users 60] [--min-answers 0] [--minutes 12]
        [--eval-every 0] [--state PATH] [--json PATH]

The issue's free per-user vectors made SmolLM2 answer for eight users with unmistakable
histories. This asks the same of real users (PAN, Reddit, Enron), with no encoder and no
codebook in the way: each of the first N training users (those with at least
``--min-answers`` kept teacher answers) gets its own offset on the assist task prompt
(`smollm2-135m-assist-task`), trained on that user's kept answers
(`python -m curp_chain.training.teacher --train-users 60 --train-per-user 12`). Two checks:

- one kept answer per user is held out (``--held-out-answers``); its gold loss under the
  user's own prompt against another user's tells whether the prompt learned the user or only
  its training answers;
- each user asks ``--asked-per-user`` held-out requests, answered greedily on llama.cpp with
  their own prompt, another user's and the task prompt alone, scored as `curp eval assist`
  scores replies, among the N users.

If even these prompts do not identify their user, the projector is not what is missing.
``--state`` keeps the offsets (safetensors) and the step count (JSON) every minute, so a
stopped run continues where it was.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from curp_chain.data.users import default_data_dir
from curp_chain.eval.assist import AssistScorer, half_width, summary
from curp_chain.interfaces.protocols import GenerationParams
from curp_chain.model.checkpoint import ASSIST_CHECKPOINT
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.model.task_prompt import load_task_prompt
from curp_chain.runtime.defaults import open_hf_backend, open_llamacpp_backend
from curp_chain.runtime.prompt import ChatTurn, build_soft_prompt
from curp_chain.tasks.assist import (
    AssistUser,
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


class OffsetState:
    """The offsets and the steps taken, saved to ``<state>.safetensors`` and ``<state>.json``."""

    def __init__(self, path: Path | None, users: list[str], shape: torch.Size):
        self.path = path
        self.losses: list[float] = []
        """One a step taken, so their number is the step count."""
        self.curve: list[dict[str, float]] = []
        """Held-out gold loss every ``--eval-every`` steps."""
        self.offsets = torch.zeros(len(users), *shape)
        self.users = users
        if path and path.with_suffix(".json").exists():
            meta = json.loads(path.with_suffix(".json").read_text())
            if meta["users"] != users:
                raise SystemExit(f"{path}: saved for other users; remove it or pick another")
            self.losses = meta["losses"]
            self.curve = meta.get("curve", [])
            self.offsets = load_file(path.with_suffix(".safetensors"))["offsets"]
            print(f"resumed at step {self.step}")
        self.offsets.requires_grad_(True)

    @property
    def step(self) -> int:
        return len(self.losses)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {"offsets": self.offsets.detach().contiguous()}, self.path.with_suffix(".safetensors")
        )
        meta = {"users": self.users, "step": self.step, "losses": self.losses, "curve": self.curve}
        self.path.with_suffix(".json").write_text(json.dumps(meta) + "\n")


def train_offsets(
    lm: Any,
    base: torch.Tensor,
    examples: list[Example],
    state: OffsetState,
    args: Any,
    held_out: list[Example],
) -> torch.Tensor:
    """(U, T, H) per-user offsets on ``base``, trained on each user's answers. Every
    ``--eval-every`` steps the held-out answers are scored, so overfitting shows as it starts."""
    index = {u: i for i, u in enumerate(state.users)}
    optimizer = torch.optim.Adam([state.offsets], lr=args.lr)
    start, saved = time.monotonic(), time.monotonic()
    bar = tqdm(total=int(args.minutes * 60), unit="s", desc="per-user prompts")
    while time.monotonic() - start < args.minutes * 60:
        batch = random.Random(state.step).sample(examples, min(8, len(examples)))
        rows = torch.tensor([index[e.user_id] for e in batch])
        sums, counts = batch_loss(lm, base + state.offsets[rows], batch, max_target_tokens=64)
        loss = sums.sum() / counts.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state.losses.append(round(loss.item(), 4))
        if args.eval_every and held_out and state.step % args.eval_every == 0:
            point = held_out_loss(lm, base, state.offsets.detach(), held_out, state.users)
            state.curve.append({"step": state.step, **point})
            tqdm.write(f"step {state.step}: held-out {json.dumps(point)}")
        bar.n = int(time.monotonic() - start)
        bar.set_postfix(step=state.step, loss=f"{statistics.fmean(state.losses[-20:]):.3f}")
        if time.monotonic() - saved > 60:
            state.save()
            saved = time.monotonic()
    bar.close()
    state.save()
    if state.losses:
        first, last = statistics.fmean(state.losses[:20]), statistics.fmean(state.losses[-20:])
        print(f"{state.step} steps, loss {first:.3f} -> {last:.3f}")
    return state.offsets.detach()


def split_answers(
    users: list[AssistUser], args: Any
) -> tuple[list[str], list[Example], list[Example]]:
    """The users kept, their training examples, and one held-out example per user."""
    by_id = {u.user_id: u for u in users}
    requests = {r.id: r for r in load_requests("all")}
    per_user: dict[str, list[Example]] = defaultdict(list)
    for r in kept_answers(answers_dir(), "train"):
        if r["user_id"] in by_id:
            text = requests[r["request_id"]].text
            per_user[r["user_id"]].append(Example(r["user_id"], (), text, r["answer"], SYSTEM))
    ids = [u.user_id for u in users if len(per_user[u.user_id]) >= max(args.min_answers, 1)]
    held = max(args.held_out_answers, 0)
    train = [e for u in ids for e in per_user[u][held:]]
    held_out = [e for u in ids for e in per_user[u][:held]]
    return ids, train, held_out


def held_out_loss(
    lm: Any, base: torch.Tensor, offsets: torch.Tensor, held_out: list[Example], ids: list[str]
) -> dict[str, Any]:
    """Gold loss (nats a token) of the held-out answers: own prompt, another user's, none."""
    if not held_out:
        return {}
    index = {u: i for i, u in enumerate(ids)}
    other = derangement(len(ids), 1)
    rows = {
        "own": [index[e.user_id] for e in held_out],
        "other": [other[index[e.user_id]] for e in held_out],
    }
    losses: dict[str, list[float]] = {}
    with torch.no_grad():
        for name, picked in [*rows.items(), ("task prompt", None)]:
            soft = (
                base.expand(len(held_out), *base.shape)
                if picked is None
                else base + offsets[picked]
            )
            sums, counts = batch_loss(lm, soft, held_out, max_target_tokens=64)
            losses[name] = (sums / counts).tolist()
    gap = [o - s for o, s in zip(losses["other"], losses["own"], strict=True)]
    result: dict[str, Any] = {name: statistics.fmean(v) for name, v in losses.items()}
    result["other minus own"] = statistics.fmean(gap)
    result["other minus own, 95% half-width"] = half_width(gap)
    return result


def reply_tests(ids: list[str], users: list[AssistUser], per_user: int) -> list[TaskExample]:
    """``per_user`` held-out requests for each user, with the user's items to score against."""
    by_id = {u.user_id: u for u in users}
    held_out = load_requests("held_out")
    return [
        TaskExample(
            id=f"{u}:{request.id}",
            user_id=u,
            messages=(*SYSTEM, ChatTurn("user", request.text)),
            gold="",
            profile=tuple(ProfileItem(p.id, p.text) for p in candidates(by_id[u])),
            source="",
        )
        for u in ids
        for request in requests_for(u, held_out, per_user)
    ]


def score_replies(
    base: torch.Tensor, offsets: torch.Tensor, ids: list[str], tests: list[TaskExample], args: Any
) -> dict[str, Any]:
    """Greedy replies under the three prompts, scored among the users."""
    backend = open_llamacpp_backend(n_threads=args.threads)
    params = GenerationParams(max_tokens=64, temperature=0.0, stop=("\n\n",))
    index = {u: i for i, u in enumerate(ids)}
    other = derangement(len(ids), 0)
    variants = {
        "task prompt (user-blind)": lambda i: base,
        "own per-user prompt": lambda i: base + offsets[i],
        "another user's prompt": lambda i: base + offsets[other[i]],
    }
    scorer = AssistScorer(tests, SentenceEncoder())
    result: dict[str, Any] = {"chance": scorer.chance, "replies": len(tests)}
    for name, soft in variants.items():
        replies = []
        for test in tqdm(tests, desc=name):
            vectors = soft(index[test.user_id]).numpy().astype(np.float32)
            prompt = build_soft_prompt(
                backend.chat_template, list(test.messages), vectors, backend.special_tokens
            )
            replies.append("".join(c.text for c in backend.stream(prompt, params)).strip())
        result[name] = summary(scorer.score(replies, tests))
        result[name]["samples"] = [
            {"user": t.user_id, "request": t.input, "reply": r}
            for t, r in list(zip(tests, replies, strict=True))[:: max(len(tests) // 8, 1)]
        ]
        shown = {
            m: round(result[name][m], 3) for m in ("top1", "top1_lexical", "gain", "on_request")
        }
        print(name, shown, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-users", type=int, default=60)
    parser.add_argument("--min-answers", type=int, default=0, help="kept answers a user needs")
    parser.add_argument("--held-out-answers", type=int, default=0)
    parser.add_argument("--asked-per-user", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=0, help="steps between held-out scores")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--state", type=Path, help="resumable offsets (no suffix)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    users = interleave_users(load_users(default_data_dir(), "train"))[: args.train_users]
    ids, examples, held_out = split_answers(users, args)
    print(f"{len(ids)} users, {len(examples)} training answers, {len(held_out)} held out")
    base = load_task_prompt(f"{ASSIST_CHECKPOINT}-task").vectors.detach()
    lm = open_hf_backend()
    state = OffsetState(args.state, ids, base.shape)
    offsets = train_offsets(lm, base, examples, state, args, held_out)
    result: dict[str, Any] = {
        "users": len(ids),
        "answers": len(examples),
        "steps": state.step,
        "lr": args.lr,
        "loss first/last 20": [
            statistics.fmean(state.losses[:20]),
            statistics.fmean(state.losses[-20:]),
        ],
        "held-out answers": held_out_loss(lm, base, offsets, held_out, ids),
        "held-out curve": state.curve,
    }
    print("held-out answers", result["held-out answers"], flush=True)
    result.update(
        score_replies(base, offsets, ids, reply_tests(ids, users, args.asked_per_user), args)
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
