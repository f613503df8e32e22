"""The evaluation harness: metrics, LaMP loading, retrieval, and real end-to-end runs.

End-to-end tests run the real llama.cpp and transformers backends on SmolLM2-135M-Instruct
with an untrained CURP checkpoint, on two users written in the official LaMP layout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from lamp_folders import USERS, write_lamp

from curp_chain.cli.eval import register
from curp_chain.errors import CurpError
from curp_chain.eval.methods import MethodSettings, Resources, bm25_ranking, parse_methods
from curp_chain.eval.metrics import clean_reply, rouge
from curp_chain.tasks import Lamp7Task, Task, get_task
from curp_chain.tasks.lamp7 import LAMP7_INSTRUCTION, LampDataError, load_lamp, source_text

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
