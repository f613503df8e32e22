"""Does scaling CURP's history offset trade rewriting for copying, and close the ROUGE tie?

CURP's soft tokens are a learned base prompt plus a centred, per-user history offset. On
LaMP-7 the task-only prompt ties CURP on ROUGE by returning the request unchanged more
often. This benchmark generates greedy replies (the settings of ``curp eval``) for the
first ``--users`` LaMP-7 users with the offset scaled by each ``--scales`` factor
(0: the base prompt alone; 1: the checkpoint as trained) and with the task-only prompt,
and prints ROUGE-1, ROUGE-L and exact copies per variant, with each variant's paired
ROUGE-1 difference to the task-only prompt (95% half-width).

    python benchmarks/offset_strength.py --data ../shared/data/lamp7 --users 100 \\
        --scales 0.5,1,1.5 --threads 2
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from curp_chain.eval.harness import EvalConfig, Harness, generate
from curp_chain.eval.metrics import clean_reply, normalized, rouge
from curp_chain.interfaces.protocols import SoftPrompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="LaMP-7 folder")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--scales", default="0.5,1,1.5", help="offset factors, comma separated")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",")]

    config = EvalConfig(
        data=args.data,
        methods=("curp", "task"),
        limit=args.users,
        gold_nll=False,
        method_settings={"threads": args.threads},
    )
    harness = Harness(config)
    curp, task = harness.methods
    curp.prepare()
    task.prepare()
    base = harness.resources.user_model.projector.base.detach().float().numpy()

    def scaled(prompt: SoftPrompt, scale: float) -> SoftPrompt:
        assert prompt.soft is not None  # every LaMP-7 user has a profile
        start = base[: len(prompt.soft)]
        return replace(prompt, soft=(start + scale * (prompt.soft - start)).astype(np.float32))

    names = ["task", *(f"curp x{s:g}" for s in scales)]
    scores: dict[str, list[tuple[float, float, bool]]] = {name: [] for name in names}
    for example in tqdm(harness.examples, desc="users"):
        own, task_prompt = curp.prompt(example), task.prompt(example)
        assert own is not None and task_prompt is not None  # both methods use the model
        prompts = [task_prompt, *(scaled(own, s) for s in scales)]
        for name, prompt in zip(names, prompts, strict=True):
            reply = clean_reply(generate(harness.resources.llm, prompt, harness.params).text)
            result = rouge(reply, example.gold)
            copied = normalized(reply) == normalized(example.source)
            scores[name].append((result.rouge1, result.rougeL, copied))

    task_rouge1 = np.array([s[0] for s in scores["task"]])
    print(f"\nLaMP-7 users 1-{len(task_rouge1)}, greedy replies:\n")
    print("| soft tokens | ROUGE-1 | ROUGE-L | exact copies | ROUGE-1 minus task |")
    print("|---|---|---|---|---|")
    for name in names:
        rows = np.array(scores[name], dtype=float)
        diff = rows[:, 0] - task_rouge1
        half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
        paired = "" if name == "task" else f"{diff.mean():+.4f} ± {half:.4f}"
        print(
            f"| {name} | {rows[:, 0].mean():.4f} | {rows[:, 1].mean():.4f} "
            f"| {int(rows[:, 2].sum())} | {paired} |"
        )


if __name__ == "__main__":
    main()
