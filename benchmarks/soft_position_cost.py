"""What a stage-2 training step costs with the soft tokens before the request or after it.

Only the soft tokens are trained, and the LLM is causal: positions before the first soft
token do not depend on anything trainable, so they need no backward pass. With the soft
tokens at the start of the user turn (today's prompt builder) almost every position sits
after them; with the soft tokens after the request, the request's positions can run once
under ``torch.no_grad`` as a key/value cache, and only the soft tokens and the reply go
through the backward pass.

This times one optimizer step's forward and backward of real examples (their token counts
taken from an examples file in the generic format, e.g. ``curp data export reddit``) both
ways, in the same run, on the frozen transformers copy of the default LLM; the two ways see
the same tokens and the same number of soft tokens. The losses agree only in shape: which
placement learns better is a training question, not measured here.

    python benchmarks/soft_position_cost.py --examples runs/mix-train/examples.jsonl \\
        --batches 6 --batch-size 8 --threads 2
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from curp_chain.data.generic import ExampleRecord, read_examples
from curp_chain.runtime.defaults import open_hf_backend
from curp_chain.runtime.prompt import ChatTurn, render_chat


def token_lengths(lm: Any, example: ExampleRecord, max_target: int) -> tuple[list[int], list[int]]:
    """The prompt's token ids and the target's (cut to ``max_target``, plus end of turn)."""
    turns = [ChatTurn(m.role, m.content) for m in example.messages]
    prompt = render_chat(lm.chat_template, turns, lm.special_tokens, add_generation_prompt=True)
    target = lm.tokenize(example.response)[:max_target] + lm.tokenize(
        lm.special_tokens["eos_token"]
    )
    return lm.tokenize(prompt), target


def _padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, L, H) embeddings and their (B, L) attention mask."""
    length = max(r.shape[0] for r in rows)
    embeds = torch.zeros(len(rows), length, rows[0].shape[1])
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        embeds[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = 1
    return embeds, mask


def _loss(logits: torch.Tensor, targets: list[list[int]], starts: list[int]) -> torch.Tensor:
    total = logits.new_zeros(())
    for row, (ids, start) in enumerate(zip(targets, starts, strict=True)):
        predicted = logits[row, start - 1 : start - 1 + len(ids)]
        total = total + F.cross_entropy(predicted.float(), torch.tensor(ids), reduction="sum")
    return total


def step_soft_first(lm: Any, soft: torch.Tensor, batch: list[tuple[list[int], list[int]]]) -> None:
    """Soft tokens before the request: every position after them is in the backward pass."""
    embed = lm.model.get_input_embeddings()
    rows, starts = [], []
    for prompt, target in batch:
        text = embed(torch.tensor(prompt + target))
        rows.append(torch.cat([text[:1], soft, text[1:]]))
        starts.append(1 + len(soft) + len(prompt))
    embeds, mask = _padded(rows)
    logits = lm.model(inputs_embeds=embeds, attention_mask=mask).logits
    _loss(logits, [t for _, t in batch], starts).backward()


def _cache_argument(model: Any) -> str:
    # transformers 5.x renamed the KV-cache argument from past_key_values to cache.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def step_soft_after(lm: Any, soft: torch.Tensor, batch: list[tuple[list[int], list[int]]]) -> None:
    """Soft tokens after the request: the request runs once without gradients, as a cache."""
    embed = lm.model.get_input_embeddings()
    # Left-pad the prefixes so every row's cache ends at the same position. The padded rows'
    # positions are not corrected: this times the work of a step, it does not train.
    prefix_length = max(len(p) for p, _ in batch)
    prefix = torch.zeros(len(batch), prefix_length, soft.shape[1])
    prefix_mask = torch.zeros(len(batch), prefix_length, dtype=torch.long)
    with torch.no_grad():
        for i, (prompt, _) in enumerate(batch):
            prefix[i, prefix_length - len(prompt) :] = embed(torch.tensor(prompt))
            prefix_mask[i, prefix_length - len(prompt) :] = 1
        output = lm.model(inputs_embeds=prefix, attention_mask=prefix_mask, use_cache=True)
    cache = getattr(output, "cache", None) or output.past_key_values
    rows = [torch.cat([soft, embed(torch.tensor(target))]) for _, target in batch]
    suffix, suffix_mask = _padded(rows)
    logits = lm.model(
        inputs_embeds=suffix,
        attention_mask=torch.cat([prefix_mask, suffix_mask], dim=1),
        use_cache=True,
        **{_cache_argument(lm.model): cache},
    ).logits
    _loss(logits, [t for _, t in batch], [len(soft)] * len(batch)).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=Path, required=True, help="generic examples JSONL")
    parser.add_argument("--batches", type=int, default=6, help="timed batches per placement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--soft-tokens", type=int, default=5)
    parser.add_argument("--max-target-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write the timings here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm: Any = open_hf_backend(None)
    lm.model.requires_grad_(False)
    examples = read_examples(args.examples)[: args.batches * args.batch_size]
    encoded = [token_lengths(lm, e, args.max_target_tokens) for e in examples]
    batches = [encoded[i : i + args.batch_size] for i in range(0, len(encoded), args.batch_size)]
    soft = torch.nn.Parameter(torch.randn(args.soft_tokens, lm.hidden_size) * 0.02)
    timings: dict[str, list[float]] = {"soft_first": [], "soft_after": []}
    steps = {"soft_first": step_soft_first, "soft_after": step_soft_after}
    step_soft_first(lm, soft, batches[0])  # warm-up
    for batch in tqdm(batches, desc="batches"):
        # Alternate the two ways on each batch, so load on the machine hits both alike.
        for name, step in steps.items():
            soft.grad = None
            start = time.perf_counter()
            step(lm, soft, batch)
            timings[name].append((time.perf_counter() - start) / len(batch))
    prompt_tokens = statistics.mean(len(p) for p, _ in encoded)
    target_tokens = statistics.mean(len(t) for _, t in encoded)
    first, after = (statistics.median(timings[k]) for k in ("soft_first", "soft_after"))
    result = {
        "examples": len(encoded),
        "mean_prompt_tokens": round(prompt_tokens, 1),
        "mean_target_tokens": round(target_tokens, 1),
        "ms_per_example_soft_first": round(first * 1000, 1),
        "ms_per_example_soft_after": round(after * 1000, 1),
        "speedup": round(first / after, 2),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps({**result, "timings_s": timings}, indent=2))


if __name__ == "__main__":
    main()
