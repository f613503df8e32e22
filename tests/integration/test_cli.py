"""The `curp` command line on a real SQLite file and the real bundled models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curp_chain.cli.main import main, read_history_file
from curp_chain.errors import InvalidHistoryItemError


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.sqlite'}"


def test_ingest_users_history_and_chat(
    tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl = tmp_path / "ada.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"text": "Debugging the analytical engine again.", "kind": "note"},
                {
                    "text": "Poetry is science.",
                    "created_at": "2024-05-01T10:00:00+00:00",
                    "metadata": {"lang": "en"},
                },
            ]
        )
        + "\n"
    )
    plain = tmp_path / "bob.txt"
    plain.write_text("Fixed the bike.\n\nRode 40 km today.\n")
    assert main(["ingest", "--store", store_url, "--user", "ada", str(jsonl)]) == 0
    assert main(["ingest", "--store", store_url, "--user", "bob", str(plain)]) == 0
    assert "stored 2 items for bob" in capsys.readouterr().out

    assert main(["users", "--store", store_url]) == 0
    users = dict(line.split("\t")[:2] for line in capsys.readouterr().out.splitlines())
    assert users == {"ada": "2", "bob": "2"}

    assert main(["history", "--store", store_url, "--user", "ada"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and any("\tnote\tDebugging" in line for line in lines)

    assert (
        main(["chat", "--store", store_url, "--user", "ada", "--max-tokens", "8", "Say hello."])
        == 0
    )
    captured = capsys.readouterr()
    assert captured.out.strip()
    assert "not personalized" not in captured.err

    assert (
        main(["chat", "--store", store_url, "--user", "nobody", "--max-tokens", "4", "Say hello."])
        == 0
    )
    assert "not personalized: user has no history" in capsys.readouterr().err


def test_a_bad_file_is_rejected_with_its_line_and_nothing_is_stored(
    tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": ""}\n')
    assert main(["ingest", "--store", store_url, "--user", "eve", str(bad)]) == 2
    assert "bad.jsonl:2: is empty or whitespace" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{oops\n')
    with pytest.raises(InvalidHistoryItemError, match="broken.jsonl:2"):
        read_history_file(broken)
    assert main(["users", "--store", store_url]) == 0
    assert "eve" not in capsys.readouterr().out
