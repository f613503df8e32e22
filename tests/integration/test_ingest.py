"""`curp ingest`: the file parser, errors without tracebacks, and resumable batches.

The subprocess tests run the real command (real encoder, real SQLite file) the way a user
does, and one of them kills it with SIGKILL halfway.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curp_chain.errors import InvalidHistoryItemError
from curp_chain.personalization.ingest import parse_history, read_history_file

ROOT = Path(__file__).resolve().parents[2]


def _texts(data: str, *, jsonl: bool = False) -> list[str]:
    return [parsed.item.text for parsed in parse_history(data, jsonl=jsonl)]


# --- Plain text ---------------------------------------------------------------------------


def test_plain_text_splits_on_newline_only() -> None:
    data = "one\u2028still one\ntwo\x85still two\nthree\x0cstill three\nfour\rstill four\n"
    assert _texts(data) == [
        "one\u2028still one",
        "two\x85still two",
        "three\x0cstill three",
        "four\rstill four",
    ]


def test_crlf_lines_and_blank_lines() -> None:
    assert _texts("a\r\n\r\nb\r\n  \r\nc") == ["a", "b", "c"]


def test_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufefffirst\nsecond\n".encode())
    assert [p.item.text for p in read_history_file(path)] == ["first", "second"]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "x"}).encode() + b"\n")
    assert [p.item.text for p in read_history_file(jsonl)] == ["x"]


def test_line_numbers_count_every_line(tmp_path: Path) -> None:
    parsed = parse_history("a\n\n\nb\n", jsonl=False)
    assert [p.line for p in parsed] == [1, 4]


# --- JSONL --------------------------------------------------------------------------------


def _one(record: dict[str, object]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def test_jsonl_fields_are_kept_as_given() -> None:
    data = (
        _one({"text": "a", "metadata": {}, "created_at": None})
        + _one({"text": "b", "kind": "mail", "created_at": "2024-05-01T12:00:00+02:00"})
        + _one({"text": "c", "metadata": {"n": 0, "f": False, "l": []}})
    )
    a, b, c = (p.item for p in parse_history(data, jsonl=True))
    assert a.metadata == {} and a.created_at is None
    assert b.kind == "mail" and b.created_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert c.metadata == {"n": 0, "f": False, "l": []}


def test_raw_line_separator_inside_a_json_string_is_accepted() -> None:
    line = '{"text": "before\u2028after\u2029end\x85"}'
    assert _texts(line, jsonl=True) == ["before\u2028after\u2029end\x85"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "x", "metadata": []}', '"metadata" must be a JSON object, got an array'),
        ('{"text": "x", "metadata": 0}', '"metadata" must be a JSON object, got a number'),
        ('{"text": "x", "metadata": null}', '"metadata" must be a JSON object, got null'),
        ('{"text": "x", "created_at": 0}', '"created_at" must be an ISO 8601 string'),
        ('{"text": "x", "created_at": ""}', "is not an ISO 8601 date"),
        ('{"text": "x", "created_at": "yesterday"}', "is not an ISO 8601 date"),
        ('{"text": "x", "created_at": "0001-01-01T00:00:00+05:00"}', "outside 1900"),
        ('{"text": "x", "kind": 5}', '"kind" must be a string, got a number'),
        ('{"text": "x", "kind": ""}', "empty kind"),
        ('{"text": 3}', '"text" must be a string'),
        ('{"text": "x", "extra": 1}', "unknown fields"),
        ('["x"]', "expected a JSON object, got an array"),
        ('{"text": "x"', "not valid JSON"),
        ('{"text": "\\ud800"}', "unpaired surrogate"),
        ('{"text": "a\\u0000b"}', "NUL"),
        ('{"text": "x", "metadata": {"n": ' + "9" * 5000 + "}}", "not usable JSON"),
        ('{"text": "x", "metadata": ' + "[" * 5000 + "]" * 5000 + "}", "nested"),
    ],
)
def test_bad_jsonl_line_is_refused_with_its_number(line: str, message: str) -> None:
    with pytest.raises(InvalidHistoryItemError, match=message) as caught:
        parse_history('{"text": "fine"}\n\n' + line + "\n", jsonl=True, source="f.jsonl")
    assert "f.jsonl:3: " in str(caught.value)


def test_every_bad_line_is_reported() -> None:
    data = '{"text": "ok"}\n{"text": ""}\n{"text": "ok"}\n{oops\n{"text": "x", "metadata": 1}\n'
    with pytest.raises(InvalidHistoryItemError, match="3 bad lines") as caught:
        parse_history(data, jsonl=True, source="f.jsonl")
    message = str(caught.value)
    assert all(f"f.jsonl:{n}:" in message for n in (2, 4, 5))
    assert "f.jsonl:1:" not in message and "f.jsonl:3:" not in message


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(
        st.text(st.characters(blacklist_characters="\n\r\x00", blacklist_categories=["Cs"])).filter(
            lambda t: bool(t.strip())
        ),
        min_size=1,
        max_size=8,
    ),
    crlf=st.booleans(),
)
def test_parser_returns_each_line_unchanged(lines: list[str], crlf: bool) -> None:
    newline = "\r\n" if crlf else "\n"
    assert _texts(newline.join(lines)) == lines
    jsonl = "\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in lines)
    assert _texts(jsonl, jsonl=True) == lines


# --- The command, as a user runs it ---------------------------------------------------------


def _curp(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT), str(ROOT / "stores"), str(ROOT / "integrations")]
        ),
    }
    return subprocess.run(
        [sys.executable, "-m", "curp_chain.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin1.txt", "caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
        (
            "deep.jsonl",
            ('{"text": "x", "metadata": ' + "[" * 100000 + "]" * 100000 + "}\n").encode(),
            "nested",
        ),
        ("meta.jsonl", b'{"text": "x", "metadata": []}\n', "must be a JSON object"),
        ("empty.txt", b"\n  \n", "holds no history items"),
        ("surrogate.jsonl", b'{"text": "\\udc00"}\n', "unpaired surrogate"),
    ],
)
def test_bad_files_exit_2_with_a_reason_and_no_traceback(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    store = f"sqlite:///{tmp_path / 'h.sqlite'}"
    result = _curp("ingest", "--store", store, "--user", "eve", str(path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("curp: error: ") and message in result.stderr


def test_bad_user_id_and_missing_file_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "ok.txt"
    path.write_text("hello\n")
    store = f"sqlite:///{tmp_path / 'h.sqlite'}"
    for args, message in [
        (["--user", " eve", str(path)], "whitespace around it"),
        (["--user", "eve", str(tmp_path / "missing.txt")], "cannot read"),
    ]:
        result = _curp("ingest", "--store", store, *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert message in result.stderr


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=30) as connection:
            return int(connection.execute("SELECT count(*) FROM curp_history_items").fetchone()[0])
    except sqlite3.OperationalError:  # tables not created yet
        return 0


@pytest.mark.slow
def test_kill_9_mid_ingest_then_rerun_stores_exactly_the_file(tmp_path: Path) -> None:
    n_lines, batch = 1200, 64
    path = tmp_path / "big.txt"
    # One repeated line on purpose: both copies must be stored, once each.
    lines = [f"post {i}: the bike ride took {i % 90} minutes" for i in range(n_lines - 1)]
    lines.append(lines[0])
    path.write_text("\n".join(lines) + "\n")
    db = tmp_path / "h.sqlite"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT), str(ROOT / "stores"), str(ROOT / "integrations")]
        ),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "curp_chain.cli.main",
            "ingest",
            "--store",
            f"sqlite:///{db}",
            "--user",
            "ada",
            "--batch-size",
            str(batch),
            "--no-progress",
            str(path),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while _count(db) == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the ingest finished before it could be killed"
    stored_before = _count(db)
    assert 0 < stored_before < n_lines
    assert stored_before % batch == 0  # each batch is all or nothing

    result = _curp(
        "ingest",
        "--store",
        f"sqlite:///{db}",
        "--user",
        "ada",
        "--batch-size",
        str(batch),
        "--no-progress",
        str(path),
    )
    assert result.returncode == 0, result.stderr
    assert (
        f"stored {n_lines - stored_before} items for ada ({stored_before} already stored"
        in result.stdout
    )
    with sqlite3.connect(db) as connection:
        texts = sorted(t for (t,) in connection.execute("SELECT text FROM curp_history_items"))
        codes = connection.execute("SELECT count(*) FROM curp_item_codes").fetchone()[0]
    assert texts == sorted(lines)
    assert codes == n_lines  # every item encoded, none twice

    again = _curp(
        "ingest", "--store", f"sqlite:///{db}", "--user", "ada", "--no-progress", str(path)
    )
    assert again.returncode == 0 and "stored 0 items" in again.stdout
    assert _count(db) == n_lines
