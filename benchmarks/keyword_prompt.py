"""Can a trained soft prompt teach SmolLM2-135M to use a stated list of a user's interests?

    python benchmarks/keyword_prompt.py [--minutes 45] [--keywords 5] [--state PATH] [--json PATH]

`benchmarks/assist_keywords.py` showed that SmolLM2 barely weaves "They often write about:
w1, ..., w5." into an everyday answer when only told to. This trains the user-blind part
instead: the assist task prompt (`smollm2-135m-assist-task`, 5 soft tokens) continues
training on the teacher's kept answers for the training users, each with that user's words
in the system message. If the trained prompt makes held-out users' answers name them, the
LLM can be taught to use what the soft tokens would carry (a summary of the user that reads
like words); if not, the user part has to be learned per user, as the free vectors were.

On the evaluation pairs of `curp eval assist` (held-out users, held-out requests), greedy
llama.cpp replies, scored as that evaluation scores them:

- ``task prompt, no words``: the untrained task prompt, the assist system message alone;
- ``trained, own words``: the trained prompt and the user's words;
- ``trained, another user's words``: the trained prompt and another evaluated user's words
  (the same budget, another user: the user-blind control).

``--state`` keeps the prompt (safetensors) and the steps (JSON) every minute; a stopped run
continues where it was.
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
from assist_keywords import evaluation_words, keywords
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
from curp_chain.tasks.assist import load_requests, load_users
from curp_chain.tasks.assist_task import ASSIST_SYSTEM, answers_dir, kept_answers
from curp_chain.training.examples import Example
from curp_chain.training.loss import batch_loss


def stating(words: list[str]) -> str:
    """The assist system message with the user's words; the message alone without words."""
    return (
        f"{ASSIST_SYSTEM} They often write about: {', '.join(words)}." if words else ASSIST_SYSTEM
    )


def training_examples(k: int) -> list[Example]:
    """The kept training answers, each under a system message with its user's words."""
    users = load_users(default_data_dir(), "train")
    words_of = keywords(users, users, k)
    requests = {r.id: r for r in load_requests("all")}
    return [
        Example(
            r["user_id"],
            (),
            requests[r["request_id"]].text,
            r["answer"],
            (ChatTurn("system", stating(words_of.get(r["user_id"], []))),),
        )
        for r in kept_answers(answers_dir(), "train")
        if r["request_id"] in requests
    ]


def save_state(path: Path, prompt: torch.Tensor, losses: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"prompt": prompt.detach().contiguous()}, path.with_suffix(".safetensors"))
    path.with_suffix(".json").write_text(json.dumps({"step": len(losses), "losses": losses}))


def load_state(path: Path | None, start: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """The saved prompt and its losses (one a step), else ``start`` and none."""
    if path is None or not path.with_suffix(".json").exists():
        return start.clone(), []
    losses = json.loads(path.with_suffix(".json").read_text())["losses"]
    print(f"resumed at step {len(losses)}")
    return load_file(path.with_suffix(".safetensors"))["prompt"], losses


def train_prompt(
    lm: Any, start: torch.Tensor, examples: list[Example], args: Any
) -> tuple[torch.Tensor, list[float]]:
    """The prompt trained from ``start`` for ``args.minutes``, and its losses (one a step)."""
    prompt, losses = load_state(args.state, start)
    prompt.requires_grad_(True)
    optimizer = torch.optim.Adam([prompt], lr=args.lr)
    began = saved = time.monotonic()
    bar = tqdm(total=int(args.minutes * 60), unit="s", desc="keyword prompt")
    while time.monotonic() - began < args.minutes * 60:
        batch = random.Random(len(losses)).sample(examples, 8)
        soft = prompt.unsqueeze(0).expand(len(batch), *prompt.shape)
        sums, counts = batch_loss(lm, soft, batch, max_target_tokens=64)
        loss = sums.sum() / counts.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), 4))
        bar.n = int(time.monotonic() - began)
        bar.set_postfix(step=len(losses), loss=f"{statistics.fmean(losses[-20:]):.3f}")
        if args.state and time.monotonic() - saved > 60:
            save_state(args.state, prompt, losses)
            saved = time.monotonic()
    bar.close()
    if args.state:
        save_state(args.state, prompt, losses)
    return prompt.detach(), losses


def gold_losses(
    lm: Any, variants: dict[str, tuple[torch.Tensor, dict[str, list[str]]]], args: Any
) -> dict[str, Any]:
    """Gold loss (nats a token) of the teacher's kept answers to the evaluation pairs under
    each variant, and own words minus another user's, paired over the pairs."""
    examples = evaluation_words(args.keywords, args.limit)[0]
    losses: dict[str, list[float]] = {}
    with torch.no_grad():
        for name, (prompt, chosen) in variants.items():
            batch = [
                Example(
                    e.user_id,
                    (),
                    e.input,
                    e.gold,
                    (ChatTurn("system", stating(chosen.get(e.user_id, []))),),
                )
                for e in examples
            ]
            losses[name] = []
            for at in tqdm(range(0, len(batch), 16), desc=f"gold loss, {name}"):
                part = batch[at : at + 16]
                soft = prompt.unsqueeze(0).expand(len(part), *prompt.shape)
                sums, counts = batch_loss(lm, soft, part, max_target_tokens=64)
                losses[name].extend((sums / counts).tolist())
    result: dict[str, Any] = {name: statistics.fmean(v) for name, v in losses.items()}
    own, other = losses["trained, own words"], losses["trained, another user's words"]
    gap = [o - w for o, w in zip(other, own, strict=True)]
    result["another's minus own"] = statistics.fmean(gap)
    result["another's minus own, 95% half-width"] = half_width(gap)
    print("gold loss", {k: round(v, 4) for k, v in result.items()}, flush=True)
    return result


def variants_of(
    start: torch.Tensor, trained: torch.Tensor, args: Any
) -> dict[str, tuple[torch.Tensor, dict[str, list[str]]]]:
    """name -> (prompt, user id -> words) of the three variants the docstring lists."""
    _, words_of, other = evaluation_words(args.keywords, args.limit)
    return {
        "task prompt, no words": (start, {}),
        "trained, own words": (trained, words_of),
        "trained, another user's words": (trained, other),
    }


def evaluate(start: torch.Tensor, trained: torch.Tensor, args: Any) -> dict[str, Any]:
    """Greedy replies to the evaluation pairs under the three variants, scored."""
    examples = evaluation_words(args.keywords, args.limit)[0]
    backend = open_llamacpp_backend(n_threads=args.threads)
    params = GenerationParams(max_tokens=64, temperature=0.0, stop=("\n\n",))

    def reply(prompt: torch.Tensor, system: str, request: str) -> str:
        turns = [ChatTurn("system", system), ChatTurn("user", request)]
        vectors = prompt.numpy().astype(np.float32)
        built = build_soft_prompt(backend.chat_template, turns, vectors, backend.special_tokens)
        return "".join(c.text for c in backend.stream(built, params)).strip()

    variants = variants_of(start, trained, args)
    scorer = AssistScorer(examples, SentenceEncoder())
    result: dict[str, Any] = {"chance": scorer.chance, "n": len(examples)}
    for name, (prompt, chosen) in variants.items():
        replies = [
            reply(prompt, stating(chosen.get(e.user_id, [])), e.input)
            for e in tqdm(examples, desc=name)
        ]
        result[name] = summary(scorer.score(replies, examples))
        result[f"{name} samples"] = [
            {"user": e.user_id, "words": chosen.get(e.user_id, []), "request": e.input, "reply": r}
            for e, r in list(zip(examples, replies, strict=True))[::16]
        ]
        shown = {m: round(v, 3) for m, v in result[name].items() if not m.endswith("_ci")}
        print(name, shown, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=45.0)
    parser.add_argument("--keywords", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, help="evaluate the first N pairs only")
    parser.add_argument("--no-replies", action="store_true", help="gold loss only")
    parser.add_argument("--state", type=Path, help="resumable prompt (no suffix)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    examples = training_examples(args.keywords)
    print(f"{len(examples)} training answers")
    start = load_task_prompt(f"{ASSIST_CHECKPOINT}-task").vectors.detach()
    lm = open_hf_backend()
    trained, losses = train_prompt(lm, start, examples, args)
    result: dict[str, Any] = {"answers": len(examples), "steps": len(losses), "lr": args.lr}
    if losses:
        result["loss first/last 20"] = [
            statistics.fmean(losses[:20]),
            statistics.fmean(losses[-20:]),
        ]
        print(f"{len(losses)} steps, loss {result['loss first/last 20']}")
    result["gold loss"] = gold_losses(lm, variants_of(start, trained, args), args)
    if not args.no_replies:
        result.update(evaluate(start, trained, args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
