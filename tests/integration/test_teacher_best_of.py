"""Best of n: the teacher draws several answers per pair and stores the most tailored kept one.

The bundled SmolLM2 stands in for the teacher: the choice does not depend on which LLM draws.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from curp_chain.data.users import default_data_dir
from curp_chain.errors import CurpError
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.runtime.defaults import open_llamacpp_backend
from curp_chain.tasks.assist import AssistFilters, interleave_users, load_requests, load_users
from curp_chain.training.teacher import (
    Teacher,
    TeacherCache,
    check_cache_settings,
    generate,
    reference_panel,
)

pytestmark = pytest.mark.skipif(
    not (default_data_dir() / "aeslc" / "dev.jsonl").is_file(),
    reason="the shared data folder (aeslc/) is not there; set $CURP_DATA_DIR",
)


def test_best_of_three_stores_the_most_tailored_kept_draw_in_a_folder_of_its_own(
    tmp_path: Path,
) -> None:
    users = interleave_users(load_users(split="held_out", corpora=("aeslc",)))
    pair = (users[0], load_requests("held_out")[0], "eval")
    encoder = SentenceEncoder()
    backend = open_llamacpp_backend(n_threads=1, slots=1, workers=1)
    panel = reference_panel(encoder, users, per_corpus=5)
    # Loose filters, so that draws of the 135M model are kept and the choice among them shows.
    filters = AssistFilters(min_on_request=0.0, min_tailored=-1.0, min_words=1)
    greedy = Teacher(backend, encoder, panel=panel, filters=filters)
    best_of = Teacher(backend, encoder, panel=panel, filters=filters, samples=3, temperature=1.0)

    record = best_of.answer(*pair)
    plain = greedy.answer(*pair)

    drawn = record["drawn"]
    assert len(drawn) == 3 and "drawn" not in plain
    kept = [d["tailored"] for d in drawn if d["kept"]]
    assert record["scores"]["tailored"] == (max(kept) if kept else drawn[0]["tailored"])
    # The first draw is the greedy answer: the same scores as the greedy teacher's.
    assert drawn[0]["tailored"] == plain["scores"]["tailored"]
    assert record["settings"].startswith("best_of=3,temperature=1.0,")
    assert record["key"] != plain["key"]
    assert record["tokens"]["output"] >= plain["tokens"]["output"]

    path = tmp_path / "best-of-3" / "answers.jsonl"
    counts = generate(best_of, [pair], TeacherCache(path), progress=False, filters=filters)
    assert counts["new"] == 1
    check_cache_settings(TeacherCache(path), best_of.settings)
    with pytest.raises(CurpError, match="other settings"):
        check_cache_settings(TeacherCache(path), greedy.settings)
