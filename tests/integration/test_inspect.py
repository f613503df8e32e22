"""`curp inspect`: a user's codes, what they stand for and what each subspace does, on a real
in-memory SQLite store with the real encoder, the bundled checkpoint and SmolLM2."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from curp_chain.chat.system_message import DEFAULT_SYSTEM_MESSAGE
from curp_chain.cli.inspect import format_report
from curp_chain.cli.main import main
from curp_chain.model.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from curp_chain.personalization.inspection import inspect_user, likelihood_shifts
from curp_chain.personalization.personalizer import Personalizer
from curp_chain.runtime.prompt import ChatTurn

HISTORIES = {
    "maya": [
        "omg just ran 18k up the hill lol legs r dead",
        "new shoes came!! testing them tmrw at 6 soooo excited",
        "cant believe its week 12 of marathon training already haha",
        "rest day = pizza and couch lol dont judge",
        "hill repeats in the rain today, im soaked but happy",
    ],
    "theo": [
        "Finally finished the 1,200-piece medieval castle puzzle. Three weeks, zero regrets.",
        "Rainy Sunday: tea, a thick fantasy novel and the cat asleep on my feet.",
        "Baked sourdough again. The crumb is getting better; the crust is still too pale.",
        "I have started reading Middlemarch. The first chapter alone is a delight.",
    ],
    "sam": [
        "New GPU is IN 🔥🔥 frame rates through the roof #gaming #pcbuild",
        "Ranked grind all night 😤 finally hit Diamond!! #valorant",
        "Spent 6 hours debugging... it was a missing semicolon 🤦 #devlife",
    ],
}


@pytest.fixture
def personalizer(encoder, memory_store):
    personalizer = Personalizer(load_checkpoint(DEFAULT_CHECKPOINT), encoder, memory_store)
    for user_id, items in HISTORIES.items():
        personalizer.add_history(user_id, items)
    return personalizer


def test_codes_are_counted_and_explained_by_real_items(personalizer: Personalizer) -> None:
    inspection = inspect_user(personalizer, "maya", codes_per_subspace=2, examples=3)
    config = personalizer.user_model.config
    stored = {
        e.item_id: e.codes
        for e in personalizer.store.get_codes("maya", personalizer.codebook_version).encoded
    }
    assert [item.codes for item in inspection.items] == [
        stored[item.item_id] for item in inspection.items
    ]
    assert inspection.population_users == 3
    assert inspection.population_items == sum(len(h) for h in HISTORIES.values())
    assert inspection.subspace_names[-1] == "style"
    assert inspection.subspace_names[0] == "text 0-23"
    for m in range(config.num_subspaces):
        assert sum(inspection.user_counts[m].values()) == len(HISTORIES["maya"])
        assert sum(inspection.population_counts[m].values()) == inspection.population_items
    assert inspection.codes
    for use in inspection.codes:
        own = {i.text for i in inspection.items if i.codes[use.subspace] == use.code}
        assert use.own and set(use.own) <= own
        assert use.typical, "the user's own items carry the code, so the store has some"
        assert all(s.codes[use.subspace] == use.code for s in use.typical)
    report = format_report(inspection)
    assert "user maya: 5 items" in report and "style" in report


def test_each_subspace_shift_is_the_change_in_the_replys_likelihood(
    personalizer: Personalizer, hf_backend
) -> None:
    inspection = inspect_user(personalizer, "maya")
    turns = [ChatTurn("system", DEFAULT_SYSTEM_MESSAGE), ChatTurn("user", "Plans for Saturday?")]
    reply = "long run in the morning lol then pizza"
    likelihood_shifts(inspection, personalizer, hf_backend, turns, reply)
    assert inspection.reply_logprob is not None and inspection.no_soft_logprob is not None
    assert inspection.reply_logprob < 0 and math.isfinite(inspection.reply_logprob)
    assert inspection.reply_logprob != inspection.no_soft_logprob
    assert len(inspection.shifts) == personalizer.user_model.config.num_subspaces
    for shift in inspection.shifts:
        assert math.isfinite(shift.delta)
        mode = inspection.population_counts[shift.subspace].most_common(1)[0][0]
        assert shift.replaced_by == mode
        if shift.changed_items == 0:
            assert shift.delta == 0.0
    assert any(shift.delta != 0.0 for shift in inspection.shifts)
    assert "per subspace" in format_report(inspection)


def test_cli_prints_the_report_and_draws_the_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'inspect.sqlite'}"
    for user_id, items in HISTORIES.items():
        path = tmp_path / f"{user_id}.txt"
        path.write_text("\n".join(items) + "\n")
        assert main(["ingest", "--store", url, "--user", user_id, str(path)]) == 0
    plot = tmp_path / "usage.png"
    assert main(["inspect", "--store", url, "--user", "theo", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "user theo: 4 items" in out and "store: 3 users, 12 items" in out
    assert "Middlemarch" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["inspect", "--store", url, "--user", "nobody"]) == 2
    assert "has no history" in capsys.readouterr().err
