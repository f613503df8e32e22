"""`curp eval assist` end to end: the kept teacher answers of held-out users, the bundled
assist checkpoint through llama.cpp, and the judge-free personalization scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curp_chain.cli.main import main as curp_main
from curp_chain.data.users import default_data_dir
from curp_chain.tasks.assist_task import answers_dir

pytestmark = [
    pytest.mark.skipif(
        not (default_data_dir() / "aeslc" / "dev.jsonl").is_file(),
        reason="the shared data folder (aeslc/) is not there; set $CURP_DATA_DIR",
    ),
    pytest.mark.skipif(
        not answers_dir().is_dir(), reason="no teacher answers; run from the repository root"
    ),
]


def test_eval_assist_scores_each_method_and_the_teacher_beside_them(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    code = curp_main(
        [
            "eval",
            "assist",
            "--limit",
            "3",
            "--methods",
            "none,curp,curp-words,curp-words-shuffled",
            "--no-gold-nll",
            "--max-tokens",
            "24",
            "--threads",
            "1",
            "--cache",
            str(tmp_path / "cache"),
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "plot.png"),
            "--no-progress",
        ]
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert results["none"]["n"] == results["curp"]["n"] == 3
    scores = results["personalization"]
    assert scores["chance_top1"] == pytest.approx(1 / 3)  # three users, one request each
    for method in ("none", "curp", "teacher"):
        row = scores[method]
        for metric in ("top1", "top1_lexical", "gain", "copy", "on_request", "refusal"):
            assert row[metric] is not None and row[metric + "_ci"] >= 0
        assert 0 <= row["top1"] <= 1 and -1 <= row["on_request"] <= 1
    assert scores["curp"]["prompt_tokens"] > scores["none"]["prompt_tokens"]  # the soft tokens
    # The words stand in the prompt beside the soft tokens: more tokens than curp alone.
    assert scores["curp-words"]["prompt_tokens"] > scores["curp"]["prompt_tokens"]
    assert results["curp-words-shuffled"]["n"] == 3
    assert scores["teacher"]["n"] == 15  # every evaluation pair of those users, kept or not
    assert scores["teacher"]["prompt_tokens"] > scores["curp"]["prompt_tokens"]  # it reads text
    assert (tmp_path / "plot.png").stat().st_size > 0
