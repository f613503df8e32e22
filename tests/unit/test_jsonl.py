"""The one JSONL reader: its line rules, its errors, and the caches' torn lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from curp_chain.data.jsonl import DataFormatError, iter_jsonl, read_jsonl
from curp_chain.data.sources import SourceCache
from curp_chain.personalization.ingest import HistoryFileError, parse_history
from curp_chain.tasks import TaskDataError
from curp_chain.tasks.lamp7 import LampDataError


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    count: int


def test_lines_end_at_newline_only_so_raw_separators_stay_in_their_string(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    # json.dumps(ensure_ascii=False) writes U+2028, U+2029 and NEL raw: one line each.
    text = "before\u2028line\u2029para\x85nel"
    path.write_text(json.dumps({"t": text}, ensure_ascii=False) + "\r\n" + '{"t": "x"}\n')
    assert [(n, v["t"]) for n, v in read_jsonl(path)] == [(1, text), (2, "x")]


def test_byte_order_mark_is_dropped_and_blank_lines_keep_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"name": "a", "count": 1}\n\n  \n{"name": "b", "count": 2}\n')
    lines = list(read_jsonl(path, Pair))
    assert [line.number for line in lines] == [1, 4]
    assert lines[1].value == Pair(name="b", count=2)


@pytest.mark.parametrize(
    ("line", "model", "problem"),
    [
        (b"{oops", None, "not valid JSON"),
        (b"[1, 2]", None, "expected a JSON object, got an array"),
        (b"null", None, "expected a JSON object, got null"),
        (b'{"n": ' + b"9" * 5000 + b"}", None, "not usable JSON"),
        (b'{"n": ' + b"[" * 100000 + b"]" * 100000 + b"}", None, "nested too deeply"),
        (b'{"t": "caf\xe9"}', None, "not UTF-8 text"),
        (b"{oops", Pair, "not valid JSON"),
        (b'{"name": "a"}', Pair, "count: Field required"),
        (b'{"name": "a", "count": 1, "x": 0}', Pair, "x: Extra inputs are not permitted"),
    ],
)
def test_a_bad_line_names_file_line_and_problem(
    tmp_path: Path, line: bytes, model: type[BaseModel] | None, problem: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"name": "a", "count": 1}\n' + line + b"\n")
    with pytest.raises(DataFormatError, match=problem) as caught:
        list(read_jsonl(path, model))
    assert str(caught.value).startswith(f"{path}:2: ")
    assert (caught.value.path, caught.value.line) == (str(path), 2)


def test_a_missing_file_is_refused_before_iterating(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="missing.jsonl: not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_a_torn_line_is_logged_and_skipped_when_asked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.jsonl"
    # A run killed mid-write, then a resumed run appending to the partial line.
    path.write_bytes(b'{"k": 1}\n{"k": 2, "v": "caf\xc3\n{"k": 3}\n{"k": 4}\n')
    with pytest.raises(DataFormatError, match="cache.jsonl:2: not UTF-8"):
        list(read_jsonl(path))
    with caplog.at_level(logging.WARNING):
        kept = [value["k"] for _, value in read_jsonl(path, skip_unreadable=True)]
    assert kept == [1, 3, 4]
    assert "cache.jsonl:2: not UTF-8 text" in caplog.text


def test_the_source_cache_reads_up_to_max_lines_past_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "sources.jsonl"
    rows = [{"key": f"k{i}", "tweet": f"t{i}", "raw": "", "status": "far"} for i in range(3)]
    path.write_text(
        json.dumps(rows[0]) + "\n" + '{"key": "torn' + json.dumps(rows[1]) + "\n"
        f"{json.dumps(rows[2])}\n"
    )
    assert sorted(SourceCache(path).records) == ["k0", "k2"]
    assert sorted(SourceCache(path, max_lines=2).records) == ["k0"]


def test_text_in_memory_reports_every_bad_line_to_on_error() -> None:
    problems: list[DataFormatError] = []
    data = '{"a": 1}\n[]\n{"a": 3}\n{oops\n'
    values = [v["a"] for _, v in iter_jsonl(data.split("\n"), "f.jsonl", on_error=problems.append)]
    assert values == [1, 3]
    assert [str(p).split(": ")[0] for p in problems] == ["f.jsonl:2", "f.jsonl:4"]


def test_the_older_error_names_are_kinds_of_data_format_error() -> None:
    assert issubclass(TaskDataError, DataFormatError)
    assert issubclass(LampDataError, DataFormatError)
    with pytest.raises(DataFormatError, match="f.jsonl:1: "):
        parse_history("[1]\n", jsonl=True, source="f.jsonl")
    assert issubclass(HistoryFileError, DataFormatError)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.text(st.characters(blacklist_categories=["Cs"]), max_size=5),
            st.text(st.characters(blacklist_categories=["Cs"])) | st.integers() | st.none(),
            max_size=3,
        ),
        max_size=6,
    )
)
def test_records_written_with_json_dumps_read_back_unchanged(rows: list[dict[str, object]]) -> None:
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    lines = data.encode("utf-8").split(b"\n")
    assert [value for _, value in iter_jsonl(lines, "mem.jsonl")] == rows
