"""`curp train words` on real users' items, and the decoder it writes serving a user's words:
the bundled codebook, the real encoder, the shared data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curp_chain.cli.main import main as curp_main
from curp_chain.data.users import default_data_dir
from curp_chain.errors import CheckpointError
from curp_chain.model.checkpoint import load_checkpoint
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.model.item_words import CONFIG_FILE, WEIGHTS_FILE, check_item_words, load_item_words
from curp_chain.personalization.personalizer import Personalizer

pytestmark = pytest.mark.skipif(
    not (default_data_dir() / "aeslc" / "dev.jsonl").is_file(),
    reason="the shared data folder (aeslc/) is not there; set $CURP_DATA_DIR",
)

CLIMBER = [
    "Sent my first V5 at the bouldering gym tonight, forearms are toast.",
    "New climbing shoes are tight but the edging is unreal.",
    "Weekend trip to the crag, chalk everywhere.",
]
BAKER = [
    "Third sourdough loaf this week, the crumb is finally open.",
    "Fed the starter at 6am, it doubled by noon.",
    "Rye bread for the farmers market on Saturday.",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("words")
    small = ["--max-users", "300", "--per-user", "10", "--held-out-items", "40"]
    rest = ["--vocabulary", "3000", "--rank", "32", "--epochs", "3", "--batch-size", "64"]
    cache = ["--lr", "1e-2", "--threads", "1", "--cache-dir", str(out / "cache")]
    assert curp_main(["train", "words", "--out", str(out), *small, *rest, *cache]) == 0
    return out


def test_training_writes_a_decoder_that_learned_and_records_how(trained: Path) -> None:
    assert (trained / WEIGHTS_FILE).is_file()
    config = json.loads((trained / CONFIG_FILE).read_text())
    history = config["provenance"]["history"]
    # A few hundred users' items overfit after an epoch or two: the best epoch is the check.
    assert min(h["loss"] for h in history[1:]) < history[0]["loss"]
    assert max(h["precision"] for h in history[1:]) > history[0]["precision"]
    assert config["provenance"]["command"].startswith("curp")
    check_item_words(load_item_words(trained), load_checkpoint())  # the bundled codebook


def test_a_users_words_come_from_their_items_nearest_the_request(trained: Path) -> None:
    decoder = load_item_words(trained)
    personalizer = Personalizer(load_checkpoint(), SentenceEncoder())
    words = {
        name: personalizer.words_from_codes(
            decoder, personalizer.encode_codes(items).tolist(), "Any plans for the weekend?"
        )
        for name, items in (("climber", CLIMBER), ("baker", BAKER))
    }
    assert words["climber"] and words["baker"]
    assert words["climber"] != words["baker"]
    assert set(words["climber"]) <= set(decoder.config.vocabulary)
    assert personalizer.words_from_codes(decoder, [], "Any plans?") == []


def test_a_decoder_for_another_codebook_is_refused_before_serving(trained: Path) -> None:
    config = json.loads((trained / CONFIG_FILE).read_text())
    config["codebook_version"] = "another"
    other = trained.parent / "other-words"
    other.mkdir(exist_ok=True)
    (other / CONFIG_FILE).write_text(json.dumps(config))
    (other / WEIGHTS_FILE).write_bytes((trained / WEIGHTS_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="another codebook"):
        check_item_words(load_item_words(other), load_checkpoint())
