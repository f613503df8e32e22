"""The everyday request set, its held-out split, the answer checks and the teacher cache,
all without a teacher model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from curp_chain.errors import CurpError
from curp_chain.tasks.assist import (
    HELD_OUT_REQUEST_FRACTION,
    REQUESTS_PATH,
    AnswerScores,
    AssistFilters,
    AssistRequest,
    AssistUser,
    answer_scores,
    clean_answer,
    copy_scores,
    interleave_users,
    is_cut_off,
    is_held_out_request,
    load_requests,
    pair_order,
    requests_for,
    select_items,
    teacher_turns,
    typical_items,
)
from curp_chain.tasks.assist_task import kept_answers, read_answers
from curp_chain.tasks.base import ProfileItem, TaskDataError
from curp_chain.training.teacher import TeacherCache, TeacherOptions

REQUEST = AssistRequest("cooking-999", "cooking", "What should I cook tonight?")
GOOD = AnswerScores(
    refusal=False,
    degenerate=False,
    copy_run=2,
    copy_ratio=0.2,
    on_request=0.5,
    tailored=0.05,
    words=20,
    cut_off=False,
)


def test_the_request_set_has_over_400_distinct_requests_of_every_kind() -> None:
    document = json.loads(REQUESTS_PATH.read_text(encoding="utf-8"))
    requests = load_requests()
    assert document["description"]
    assert len(requests) >= 400
    assert len({r.id for r in requests}) == len(requests)
    assert len({r.text.lower() for r in requests}) == len(requests)
    assert {r.kind for r in requests} == set(document["kinds"])
    assert min(Counter(r.kind for r in requests).values()) >= 20


def test_held_out_requests_are_about_a_fifth_disjoint_and_chosen_by_id_alone() -> None:
    everything = load_requests("all")
    train, held = load_requests("train"), load_requests("held_out")
    assert {r.id for r in train}.isdisjoint({r.id for r in held})
    assert len(train) + len(held) == len(everything)
    assert abs(len(held) / len(everything) - HELD_OUT_REQUEST_FRACTION) < 0.05
    assert [r.id for r in held] == [r.id for r in everything if is_held_out_request(r.id)]
    assert {r.kind for r in held} == {r.kind for r in everything}


def test_an_unknown_request_split_is_refused_by_name() -> None:
    with pytest.raises(CurpError, match="held_out"):
        load_requests("dev")  # type: ignore[arg-type]


def test_an_answer_that_repeats_a_post_fails_the_copy_check() -> None:
    post = "Just finished my first half marathon in the rain, legs are jelly"
    copied = "Just finished my first half marathon in the rain! Make pasta tonight."
    own = "Make a big bowl of pasta tonight to refuel after all that running."
    run, ratio = copy_scores(copied, [post, "unrelated words here"])
    assert run >= 8
    assert AssistFilters().reasons(GOOD.model_copy(update={"copy_run": run})) == ["copy"]
    run, ratio = copy_scores(own, [post])
    assert run <= 2 and ratio < 0.6
    verbatim_run, verbatim_ratio = copy_scores(post, [post])
    assert verbatim_ratio == 1.0 and verbatim_run == len(post.split())


def test_short_long_and_cut_off_answers_fail_the_length_check() -> None:
    filters = AssistFilters()
    assert filters.reasons(GOOD) == []
    assert filters.reasons(GOOD.model_copy(update={"words": 3})) == ["length"]
    assert filters.reasons(GOOD.model_copy(update={"words": 81})) == ["length"]
    assert filters.reasons(GOOD.model_copy(update={"cut_off": True})) == ["length"]
    assert is_cut_off("Try a spicy ramen with the", "length")
    assert not is_cut_off("Try a spicy ramen tonight.", "length")
    assert not is_cut_off("Try a spicy ramen with the", "stop")


def _unit(*values: float) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(values), dim=-1)


def test_scores_flag_a_refusal_and_measure_request_and_user_closeness() -> None:
    vectors = {
        "answer": _unit(1.0, 0.0, 0.0),
        "request": _unit(1.0, 1.0, 0.0),
        "own": _unit(1.0, 0.0, 0.0),
        "others": torch.stack([_unit(0.0, 1.0, 0.0), _unit(0.0, 0.0, 1.0)]),
    }
    refusal = "As an AI, I don't have personal preferences, but pasta is popular."
    scores = answer_scores(refusal, "stop", REQUEST, ["I love pasta"], vectors)
    assert scores.refusal
    assert scores.on_request == pytest.approx(0.7071, abs=1e-3)
    assert scores.tailored == pytest.approx(1.0)
    assert "refusal" in AssistFilters().reasons(scores)
    vectors["own"] = _unit(0.0, 0.0, 1.0)
    vectors["others"] = torch.stack([_unit(1.0, 0.0, 0.0)])
    scores = answer_scores("Cook a mushroom risotto tonight.", "stop", REQUEST, [], vectors)
    assert not scores.refusal and scores.tailored < 0
    assert AssistFilters().reasons(scores) == ["untailored"]


def test_items_nearest_the_request_come_first_then_the_newest() -> None:
    items = [ProfileItem(str(i), f"item {i}") for i in range(10)]  # oldest first
    vectors = torch.zeros(10, 3)
    vectors[:, 2] = 1.0
    vectors[2] = _unit(1.0, 0.0, 0.0)
    vectors[5] = _unit(1.0, 0.2, 0.0)
    shown = select_items(items, vectors, _unit(1.0, 0.0, 0.0), max_shown=4, by_similarity=2)
    assert [i.id for i in shown] == ["2", "5", "9", "8"]


def test_typical_items_are_those_nearest_the_centroid_whatever_the_request() -> None:
    items = [ProfileItem(str(i), f"item {i}") for i in range(6)]
    vectors = torch.stack([_unit(1.0, 0.1 * i, 0.0) for i in range(5)] + [_unit(0.0, 0.0, 1.0)])
    shown = typical_items(items, vectors, max_shown=3)
    assert [i.id for i in shown] == ["2", "1", "3"]  # the middle of the cluster; never "5"
    with pytest.raises(CurpError, match="vectors"):
        typical_items(items, vectors[:4])


def test_the_prompt_shows_the_items_and_ends_with_the_request() -> None:
    shown = [ProfileItem("a", "Vegan baking all weekend"), ProfileItem("b", "Honda chain " * 40)]
    system, user = teacher_turns(REQUEST, shown)
    assert "- Vegan baking all weekend" in system.content
    assert len(system.content) < 800  # the long item was cut
    assert user.role == "user" and user.content == REQUEST.text
    with pytest.raises(CurpError, match="wording"):
        teacher_turns(REQUEST, shown, "no-such-wording")


def _user(user_id: str, corpus: str) -> AssistUser:
    return AssistUser(user_id, corpus, (ProfileItem("1", "x"),))


def test_pairs_go_round_robin_over_users_with_requests_of_different_kinds() -> None:
    users = interleave_users(
        [_user(f"pan19:{i}", "pan19") for i in range(5)] + [_user("aeslc:a", "aeslc")]
    )
    assert users[0].corpus == "aeslc"  # corpora taken in turn, not by size
    requests = load_requests("train")
    pairs = pair_order(users, requests, per_user=4)
    assert len(pairs) == 24
    assert len({u.user_id for u, _ in pairs[:6]}) == 6
    picks = requests_for("pan19:3", requests, 4)
    assert picks == requests_for("pan19:3", requests, 4)
    assert len({r.kind for r in picks}) == 4
    # More requests per user extend the same list: answers already cached are reused.
    assert requests_for("pan19:3", requests, 12)[:4] == picks


def _record(key: str, user_id: str, scores: AnswerScores, split: str = "train") -> dict:
    return {
        "key": key,
        "teacher": "T",
        "wording": "posts",
        "user_id": user_id,
        "request_id": "cooking-001",
        "split": split,
        "answer": "Cook pasta.",
        "scores": scores.model_dump(),
    }


def test_the_cache_skips_a_partial_last_line_and_resumes_on_a_new_line(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    cache = TeacherCache(path)
    cache.add(_record("k1", "pan19:1", GOOD))
    with path.open("a", encoding="utf-8") as out:
        out.write('{"key": "k2", "teacher": "T", "wor')  # a run killed mid-write
    resumed = TeacherCache(path)
    assert len(resumed) == 1
    assert resumed.has_pair("T", "posts", "pan19:1", "cooking-001")
    assert not resumed.has_pair("T", "posts", "pan19:2", "cooking-001")
    resumed.add(_record("k3", "pan19:3", GOOD.model_copy(update={"copy_ratio": 0.9}), "eval"))
    again = TeacherCache(path)
    assert set(again.records) == {"k1", "k3"}
    assert [r["key"] for r in again.accepted()] == ["k1"]
    assert [r["key"] for r in again.accepted(AssistFilters(max_copy_ratio=0.95))] == ["k1", "k3"]
    assert [r["key"] for r in again.accepted(split="eval")] == []


def test_a_cleaned_answer_keeps_its_first_paragraph_and_complete_sentences() -> None:
    listed = "Here are some ideas:\n\n1. **Pasta**: quick and cheap."
    assert clean_answer(listed, "stop") == "Here are some ideas:"
    assert is_cut_off(clean_answer(listed, "stop"), "stop")  # a list announced, not given
    long = "Try a spicy ramen tonight. It suits your week of runs. Add an egg and some"
    assert clean_answer(long, "length") == "Try a spicy ramen tonight. It suits your week of runs."
    assert clean_answer("Make a ramen with the", "length") == "Make a ramen with the"
    assert clean_answer("  Cook risotto.  ", "stop") == "Cook risotto."


def test_a_shard_sees_the_pairs_other_shards_answered_beside_it(tmp_path: Path) -> None:
    TeacherCache(tmp_path / "shard0.jsonl").add(_record("k1", "pan19:1", GOOD))
    own = TeacherCache(tmp_path / "shard1.jsonl")
    own.add(_record("k2", "pan19:2", GOOD))
    resumed = TeacherCache(tmp_path / "shard1.jsonl")
    assert resumed.has_pair("T", "posts", "pan19:1", "cooking-001")  # the sibling's pair
    assert set(resumed.records) == {"k2"}  # only its own file's records
    alone = TeacherCache(tmp_path / "shard1.jsonl", siblings=False)
    assert not alone.has_pair("T", "posts", "pan19:1", "cooking-001")


def test_answers_are_read_from_every_file_of_the_folder_once_per_pair(tmp_path: Path) -> None:
    TeacherCache(tmp_path / "a.jsonl").add(_record("k1", "pan19:1", GOOD, "eval"))
    TeacherCache(tmp_path / "b.jsonl").add(_record("k1b", "pan19:1", GOOD, "eval"))  # again
    TeacherCache(tmp_path / "b.jsonl").add(
        _record("k2", "pan19:2", GOOD.model_copy(update={"copy_run": 9}), "eval")
    )
    TeacherCache(tmp_path / "b.jsonl").add(_record("k3", "pan19:3", GOOD, "train"))
    assert [r["key"] for r in read_answers(tmp_path)] == ["k1", "k2", "k3"]
    assert [r["key"] for r in kept_answers(tmp_path, "eval")] == ["k1"]
    with pytest.raises(TaskDataError, match="no teacher answers"):
        list(read_answers(tmp_path / "missing"))


def test_the_teacher_options_refuse_a_shard_past_the_last() -> None:
    with pytest.raises(ValueError, match="--shard must be below"):
        TeacherOptions(shards=2, shard=2)
