"""The generic data format and the task adapters that write it.

Adapters are tested on small files written in each task's shared layout; the checks on the
real data read ../shared/data (or $CURP_DATA_DIR) and are skipped, with the reason, without it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from curp_chain.cli.main import main as curp_main
from curp_chain.data.generic import (
    DataFormatError,
    ExampleRecord,
    ItemRecord,
    Message,
    check_users,
    history_for,
    read_examples,
    read_histories,
    write_examples,
    write_histories,
)
from curp_chain.data.users import default_data_dir
from curp_chain.tasks import MAX_SOURCE_CHARS, TaskDataError, cut, get_task

DATA = default_data_dir()


def _example(
    user: str = "maya", response: str = "pasta then climbing lol", **kw: Any
) -> ExampleRecord:
    messages = (Message(role="user", content="plans tonight?"),)
    return ExampleRecord(user_id=user, messages=messages, response=response, **kw)


def _lines(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- the format -------------------------------------------------------------------------------


def test_examples_and_histories_round_trip(tmp_path: Path) -> None:
    examples = [_example(item_id="m2"), _example("theo", "I shall cook a risotto.")]
    histories = {
        "maya": [
            ItemRecord(text="first note"),
            ItemRecord(text="pasta then climbing lol", id="m2"),
        ],
        "theo": [
            ItemRecord(
                text="Good evening.", kind="chat", created_at=datetime(2026, 1, 2, tzinfo=UTC)
            )
        ],
    }
    write_examples(tmp_path / "e.jsonl", examples)
    write_histories(tmp_path / "h.jsonl", histories)
    assert read_examples(tmp_path / "e.jsonl") == examples
    assert read_histories(tmp_path / "h.jsonl") == histories
    # Optional fields left unset are not written.
    assert "item_id" not in (tmp_path / "e.jsonl").read_text().splitlines()[1]


def test_items_may_be_plain_strings(tmp_path: Path) -> None:
    path = _lines(
        tmp_path / "h.jsonl", [{"user_id": "a", "items": ["one", {"text": "two", "id": "x"}]}]
    )
    assert read_histories(path) == {"a": [ItemRecord(text="one"), ItemRecord(text="two", id="x")]}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{not json", "e.jsonl:2: not valid JSON"),
        ({"user_id": "a", "messages": [{"role": "user", "content": "hi"}]}, "e.jsonl:2: response"),
        (
            {"user_id": "a", "messages": [{"role": "assistant", "content": "hi"}], "response": "x"},
            "last message must be the user's",
        ),
        (
            {"user_id": "a", "messages": [{"role": "bot", "content": "hi"}], "response": "x"},
            "e.jsonl:2: messages.0.role",
        ),
        (
            {
                "user_id": "a",
                "messages": [{"role": "user", "content": "hi"}],
                "response": "x",
                "extra": 1,
            },
            "e.jsonl:2: extra",
        ),
        ({"user_id": "", "messages": [], "response": "x"}, "e.jsonl:2: user_id"),
    ],
)
def test_bad_example_lines_name_file_line_and_field(tmp_path: Path, row: Any, message: str) -> None:
    good = {"user_id": "a", "messages": [{"role": "user", "content": "hi"}], "response": "x"}
    path = _lines(tmp_path / "e.jsonl", [good, row])
    with pytest.raises(DataFormatError, match=message.replace("(", r"\(")):
        read_examples(path)


def test_bad_history_files(tmp_path: Path) -> None:
    twice = _lines(
        tmp_path / "h.jsonl", [{"user_id": "a", "items": ["x"]}, {"user_id": "a", "items": []}]
    )
    with pytest.raises(DataFormatError, match=r"h.jsonl:2: user 'a' already has a line"):
        read_histories(twice)
    empty_text = _lines(tmp_path / "h2.jsonl", [{"user_id": "a", "items": [{"text": ""}]}])
    with pytest.raises(DataFormatError, match=r"h2.jsonl:1: items"):
        read_histories(empty_text)
    with pytest.raises(DataFormatError, match="not found"):
        read_histories(tmp_path / "missing.jsonl")
    with pytest.raises(DataFormatError, match="1 users of the examples have no history"):
        check_users([_example("nobody")], {}, "e.jsonl")


def test_histories_from_a_sqlite_store(tmp_path: Path) -> None:
    from curp_chain.interfaces.history import NewHistoryItem
    from curp_chain_stores import SQLHistoryStore

    url = f"sqlite:///{tmp_path / 'h.db'}"
    with SQLHistoryStore(url) as store:
        store.setup()
        old = datetime(2025, 1, 1, tzinfo=UTC)
        store.add_items("maya", [NewHistoryItem("older note", created_at=old), "newer note"])
    histories = read_histories(url)
    assert [i.text for i in histories["maya"]] == ["older note", "newer note"]
    assert all(i.id and i.id.isdigit() for i in histories["maya"])


def test_history_leaves_the_target_out_and_keeps_the_newest() -> None:
    items = [ItemRecord(text=f"note {i}", id=f"n{i}") for i in range(6)]
    items.append(ItemRecord(text="pasta then climbing lol"))  # the target, without an id
    example = _example(item_id="n5")
    assert history_for(example, {"maya": items}, 3) == ("note 2", "note 3", "note 4")
    assert history_for(example, {}, 3) == ()


# --- the tasks --------------------------------------------------------------------------------


def test_cut_bounds_long_texts_at_a_word() -> None:
    text = "word " * 400
    short = cut(text)
    assert len(short) <= MAX_SOURCE_CHARS and short.endswith("word...")
    assert cut("  short  ") == "short"


def _shared_layout(root: Path) -> Path:
    (root / "reddit").mkdir(parents=True)
    parent = "Which dorm should I pick? " + "details " * 200
    _lines(
        root / "reddit" / "dev.jsonl",
        [
            {
                "user_id": "alice",
                "items": [
                    {
                        "id": "t1_a",
                        "kind": "comment",
                        "subreddit": "College",
                        "created": 1600000000,
                        "text": "go west hall",
                    },
                    {
                        "id": "t1_b",
                        "kind": "comment",
                        "subreddit": "College",
                        "created": 1600000100,
                        "text": "lol same",
                    },
                ],
                "pairs": [{"id": "t1_a", "parent": parent, "reply": "go west hall"}],
            },
            {"user_id": "bob", "items": [{"id": "t3_c", "text": "hello"}], "pairs": []},
        ],
    )
    (root / "aeslc").mkdir()
    emails = [
        {"id": f"kay_sent_{i}", "body": f"Please see the draft {i}.\nKay", "subject": f"Draft {i}"}
        for i in range(3)
    ]
    _lines(root / "aeslc" / "dev.jsonl", [{"user_id": "kay", "emails": emails}])
    (root / "personachat").mkdir()
    turns = [{"query": f"question {i} ?", "reply": f"answer {i} ."} for i in range(4)]
    _lines(
        root / "personachat" / "dev.jsonl",
        [
            {
                "dialogue_id": "valid_0",
                "persona": ["i have two dogs.", "i like jazz."],
                "turns": turns,
            },
            {"dialogue_id": "valid_1", "persona": ["i like jazz.", "i ski."], "turns": turns[:1]},
            {"dialogue_id": "valid_2", "persona": ["i bake bread."], "turns": turns[:2]},
        ],
    )
    return root


def test_reddit_adapter(tmp_path: Path) -> None:
    task = get_task("reddit")
    examples, histories = task.records(_shared_layout(tmp_path), "dev")
    assert [e.user_id for e in examples] == ["reddit:alice"]
    (example,) = examples
    assert example.item_id == "t1_a" and example.response == "go west hall"
    assert [m.role for m in example.messages] == ["system", "user"]
    # The parent is cut, so sequence lengths stay bounded.
    assert len(task.source_of(example)) <= MAX_SOURCE_CHARS
    assert histories["reddit:alice"][0].metadata == {"subreddit": "College"}
    (evaluated,) = task.eval_examples(tmp_path, "dev")
    # The reply itself is not in its own history; the newest item comes first.
    assert evaluated.profile_texts == ["lol same"]
    assert evaluated.source.startswith("Which dorm")


def test_aeslc_adapter_leaves_the_subject_out_of_the_history(tmp_path: Path) -> None:
    task = get_task("aeslc")
    examples, histories = task.records(_shared_layout(tmp_path), "dev")
    assert [e.response for e in examples] == ["Draft 0", "Draft 1", "Draft 2"]
    assert [i.text for i in histories["aeslc:kay"]] == ["Draft 0", "Draft 1", "Draft 2"]
    evaluated = task.eval_examples(tmp_path, "dev", per_user=2)
    assert [e.gold for e in evaluated] == ["Draft 1", "Draft 2"]
    assert evaluated[1].profile_texts == ["Draft 1", "Draft 0"]


def test_personachat_joins_dialogues_of_one_persona(tmp_path: Path) -> None:
    task = get_task("personachat")
    examples, histories = task.records(_shared_layout(tmp_path), "dev")
    assert set(histories) == {"personachat:valid_0", "personachat:valid_2"}
    assert [i.text for i in histories["personachat:valid_0"]] == [
        "i have two dogs.",
        "i like jazz.",
        "i ski.",
    ]
    assert len(examples) == 4 + 1 + 2
    fourth = examples[3]
    # Two earlier exchanges as context, then the partner's message.
    assert [m.role for m in fourth.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert fourth.messages[-1].content == "question 3 ?" and fourth.response == "answer 3 ."
    with pytest.raises(TaskDataError, match="not 'train'"):
        task.records(tmp_path, "train")


def test_task_files_that_do_not_fit_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "reddit").mkdir()
    _lines(
        tmp_path / "reddit" / "dev.jsonl",
        [{"user_id": "a", "items": [], "pairs": []}, {"user_id": 3}],
    )
    with pytest.raises(TaskDataError, match=r"dev.jsonl:2: 'user_id' must be a str"):
        get_task("reddit").records(tmp_path, "dev")
    with pytest.raises(TaskDataError, match="not a folder"):
        get_task("aeslc").records(tmp_path / "nowhere", "dev")
    with pytest.raises(Exception, match="unknown task 'tweets'"):
        get_task("tweets")


def test_export_writes_the_generic_format(tmp_path: Path) -> None:
    root = _shared_layout(tmp_path / "data")
    out = tmp_path / "out"
    assert (
        curp_main(
            ["data", "export", "aeslc", "--data", str(root), "--split", "dev", "--out", str(out)]
        )
        == 0
    )
    assert len(read_examples(out / "examples.jsonl")) == 3
    assert (
        curp_main(
            [
                "data",
                "check",
                "--examples",
                str(out / "examples.jsonl"),
                "--histories",
                str(out / "histories.jsonl"),
            ]
        )
        == 0
    )


@pytest.mark.skipif(
    not (DATA / "reddit" / "dev.jsonl").is_file(), reason=f"shared data not found at {DATA}"
)
def test_the_shared_data_exports(tmp_path: Path) -> None:
    counts = {}
    for name in ("lamp7", "reddit", "aeslc", "personachat"):
        task = get_task(name)
        examples, histories = task.records(DATA, "dev")
        check_users(examples, histories, name)
        counts[name] = len({e.user_id for e in examples})
        longest = max(len(task.source_of(e)) for e in examples)
        assert name == "lamp7" or longest <= MAX_SOURCE_CHARS
    # The README's counts: 300 LaMP-7 users, 495 Reddit and 10 AESLC dev authors.
    assert (counts["lamp7"], counts["reddit"], counts["aeslc"]) == (300, 495, 10)
    assert 20 < counts["personachat"] < 595


def _folder(path: Path, users: dict[str, int]) -> Path:
    examples = [
        _example(user, f"{user} reply {n}") for user, count in users.items() for n in range(count)
    ]
    write_examples(path / "examples.jsonl", examples)
    write_histories(path / "histories.jsonl", {u: [ItemRecord(text=f"{u} note")] for u in users})
    return path


def test_mix_caps_users_and_sources_and_keeps_their_histories(tmp_path: Path) -> None:
    tweets = _folder(tmp_path / "tweets", {"t:ana": 9, "t:bo": 2})
    emails = _folder(tmp_path / "emails", {"e:kay": 40, "e:lu": 3, "e:mo": 3})
    out = tmp_path / "mix"
    args = ["data", "mix", str(tweets), str(emails), "--out", str(out), "--per-user", "4"]
    assert curp_main([*args, "--per-source", "6"]) == 0
    mixed = read_examples(out / "examples.jsonl")
    users = [e.user_id for e in mixed]
    # tweets: 4 of ana's 9 and both of bo's; emails: 4 + 3 + 3, then 6 of the folder.
    assert sum(u.startswith("t:") for u in users) == 6
    assert sum(u.startswith("e:") for u in users) == 6
    assert max(users.count(u) for u in set(users)) <= 4
    assert set(read_histories(out / "histories.jsonl")) == set(users)
    # Seeded: the same command writes the same file.
    first = (out / "examples.jsonl").read_text()
    assert curp_main([*args, "--per-source", "6"]) == 0
    assert (out / "examples.jsonl").read_text() == first


def test_mix_refuses_a_user_in_two_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = _folder(tmp_path / "one", {"ana": 2})
    two = _folder(tmp_path / "two", {"ana": 2})
    assert curp_main(["data", "mix", str(one), str(two), "--out", str(tmp_path / "m")]) == 2
    assert "'ana' is also in an earlier folder" in capsys.readouterr().err
