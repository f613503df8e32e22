"""The item-word decoder: which words it reads off which items, and its files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from curp_chain.errors import CheckpointError
from curp_chain.model.checkpoint import load_checkpoint
from curp_chain.model.item_words import (
    CONFIG_FILE,
    WORDS_ASK,
    WORDS_LEAD,
    ItemWordDecoder,
    ItemWordsConfig,
    check_item_words,
    load_item_words,
    save_item_words,
    with_words,
)
from curp_chain.personalization.personalizer import with_request_words
from curp_chain.runtime.prompt import ChatTurn
from curp_chain.training.item_words import is_content_word, loss_of

VOCABULARY = ["bread", "climbing", "novel"]


def decoder(**overrides: object) -> ItemWordDecoder:
    """Item vectors of width 6 whose first three dimensions say which word they hold."""
    settings: dict = {
        "item_dim": 6,
        "encoder_dim": 4,
        "codebook_version": "test",
        "vocabulary": VOCABULARY,
        "idf": [1.0, 2.0, 3.0],
        "nearest_items": 1,
        "words": 2,
        "min_probability": 0.2,
    }
    model = ItemWordDecoder(ItemWordsConfig(**(settings | overrides)))
    with torch.no_grad():
        layer(model).weight.zero_()
        layer(model).bias.zero_()
        layer(model).weight[:, :3] = 10 * torch.eye(3)
    return model.eval()


def layer(model: ItemWordDecoder) -> torch.nn.Linear:
    """The decoder's one linear map (these tests use no bottleneck)."""
    assert isinstance(model.linear, torch.nn.Linear)
    return model.linear


def unit(i: int) -> torch.Tensor:
    return torch.eye(6)[i]


def test_the_words_come_from_the_item_nearest_the_request() -> None:
    items = torch.stack([unit(0), unit(1)])  # a bread item, a climbing item
    assert decoder().words_for(items, unit(1)) == ["climbing"]
    assert decoder().words_for(items, unit(0)) == ["bread"]


def test_pooled_words_are_ranked_by_probability_times_rarity_and_unlikely_ones_left_out() -> None:
    items = torch.stack([unit(0), unit(1)])
    both = decoder(nearest_items=2)
    assert both.words_for(items, unit(0)) == ["climbing", "bread"]  # same mass, idf 2 > 1
    # Each word now has about half the pooled mass: a threshold above it says nothing.
    assert decoder(nearest_items=2, min_probability=0.6).words_for(items, unit(0)) == []


def test_a_user_with_fewer_items_than_nearest_items_still_gets_words() -> None:
    assert decoder(nearest_items=4).words_for(unit(2)[None], unit(0)) == ["novel"]


def test_words_join_the_request_in_the_last_user_turn_only() -> None:
    turns = [ChatTurn("system", "Be brief."), ChatTurn("user", "hi"), ChatTurn("user", "Dinner?")]
    told = with_request_words(turns, ["bread", "novel"])
    assert told[:2] == turns[:2]
    assert told[2].content == with_words("Dinner?", ["bread", "novel"])
    assert "Dinner?" in told[2].content and "bread, novel" in told[2].content
    assert WORDS_LEAD in told[2].content and WORDS_ASK in told[2].content
    assert with_request_words(turns, []) == turns
    assert with_words("Dinner?", []) == "Dinner?"


def test_save_and_load_keep_the_weights_and_the_vocabulary(tmp_path: Path) -> None:
    saved = decoder()
    save_item_words(tmp_path, saved)
    loaded = load_item_words(tmp_path)
    assert loaded.config == saved.config
    assert torch.equal(layer(loaded).weight, layer(saved).weight)  # whole numbers: exact
    assert layer(loaded).weight.dtype == torch.float32
    assert not loaded.training


def test_a_damaged_decoder_is_refused_clearly(tmp_path: Path) -> None:
    save_item_words(tmp_path, decoder())
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot load the item-word decoder"):
        load_item_words(tmp_path)
    with pytest.raises(CheckpointError, match="cannot load"):
        load_item_words(tmp_path / "missing")


def test_a_decoder_of_another_codebook_is_refused() -> None:
    with pytest.raises(CheckpointError, match="another codebook"):
        check_item_words(decoder(), load_checkpoint())


def test_training_on_items_teaches_the_decoder_their_words() -> None:
    torch.manual_seed(0)
    model = decoder()
    torch.nn.init.normal_(layer(model).weight, std=0.01)
    vectors = torch.stack([unit(3), unit(4), unit(5)])  # dimensions the fixed weights ignore
    wanted = [[0], [1, 2], [2]]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    before = loss_of(model, vectors, wanted).item()
    for _ in range(50):
        loss = loss_of(model, vectors, wanted)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_of(model, vectors, wanted).item() < before / 2
    assert model.eval().words_for(vectors, unit(3))[0] == "bread"


def test_function_words_digits_and_short_words_never_enter_the_vocabulary() -> None:
    assert [w for w in ["the", "bread", "42", "ok", "climbing"] if is_content_word(w)] == [
        "bread",
        "climbing",
    ]
    assert not is_content_word("it\u2019s") and not is_content_word("don\u2019t")  # curly
