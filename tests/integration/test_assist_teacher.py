"""The teacher answers everyday requests for real users and caches them; a rerun adds nothing.

Needs a teacher chat model in GGUF (Qwen2.5-Coder-0.5B-Instruct was used): set
$CURP_TEACHER_GGUF to its path. Without it, these tests are skipped with that reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from curp_chain.data.users import default_data_dir
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.runtime.defaults import open_llamacpp_backend
from curp_chain.tasks.assist import interleave_users, load_requests, load_users
from curp_chain.training.teacher import (
    TEACHER_GGUF_ENV,
    Teacher,
    TeacherCache,
    generate,
    reference_panel,
)

TEACHER = os.environ.get(TEACHER_GGUF_ENV)

pytestmark = [
    pytest.mark.skipif(
        not TEACHER, reason=f"set ${TEACHER_GGUF_ENV} to a teacher GGUF file to run"
    ),
    pytest.mark.skipif(
        not (default_data_dir() / "aeslc" / "dev.jsonl").is_file(),
        reason="the shared data folder (aeslc/) is not there; set $CURP_DATA_DIR",
    ),
]


def test_two_users_answers_are_cached_without_history_text_and_a_rerun_adds_none(
    tmp_path: Path,
) -> None:
    users = interleave_users(load_users(split="held_out", corpora=("aeslc",)))
    pairs = [(user, load_requests("held_out")[0], "eval") for user in users[:2]]
    encoder = SentenceEncoder()
    backend = open_llamacpp_backend(model_path=TEACHER, n_threads=1, slots=1, workers=1)
    teacher = Teacher(backend, encoder, panel=reference_panel(encoder, users, per_corpus=5))
    path = tmp_path / "answers.jsonl"

    counts = generate(teacher, pairs, TeacherCache(path), progress=False)

    assert counts["new"] == 2 and counts["skipped"] == 0
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    for line, (user, request, _) in zip(lines, pairs, strict=True):
        record = json.loads(line)
        assert (record["user_id"], record["request_id"]) == (user.user_id, request.id)
        assert record["answer"].strip() and record["tokens"]["output"] > 0
        ids = {item.id for item in user.items}
        assert 0 < len(record["shown"]) <= 8 and set(record["shown"]) <= ids
        without_answer = json.dumps({k: v for k, v in record.items() if k != "answer"})
        assert not any(item.text in without_answer for item in user.items if len(item.text) > 12)

    again = generate(teacher, pairs, TeacherCache(path), progress=False)

    assert again["new"] == 0 and again["skipped"] == 2
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2
