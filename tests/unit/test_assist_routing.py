"""Which checkpoint a personalized request goes to, and the judge-free lexical measure."""

from __future__ import annotations

import pytest

from curp_chain.chat.routing import route, write_system_messages
from curp_chain.errors import CurpError
from curp_chain.eval.assist import LexicalIndex, half_width
from curp_chain.runtime.prompt import ChatTurn
from curp_chain.tasks import AeslcTask, Lamp7Task, RedditTask

WRITE = write_system_messages("You write Reddit comments, briefly.")


def test_a_write_task_system_message_routes_to_write_and_anything_else_to_assist() -> None:
    for task in (Lamp7Task(), RedditTask(), AeslcTask()):
        assert route(task.request("some text"), "auto", WRITE) == "write"
    assert route([ChatTurn("user", "What should I cook tonight?")], "auto", WRITE) == "assist"
    own = [ChatTurn("system", "You are a helpful assistant."), ChatTurn("user", "Dinner?")]
    assert route(own, "auto", WRITE) == "assist"
    checkpoint_own = [ChatTurn("system", "You write  Reddit comments, briefly.\n")]
    assert route([*checkpoint_own, ChatTurn("user", "hi")], "auto", WRITE) == "write"


def test_an_explicit_mode_wins_and_an_unknown_one_is_refused() -> None:
    everyday = [ChatTurn("user", "Recommend a book.")]
    assert route(everyday, "write", WRITE) == "write"
    assert route(RedditTask().request("post"), "assist", WRITE) == "assist"
    with pytest.raises(CurpError, match="unknown mode 'draft'"):
        route(everyday, "draft", WRITE)


def test_the_lexical_index_names_the_user_whose_words_a_reply_shares() -> None:
    index = LexicalIndex(
        {
            "baker": "sourdough starter crumb crust oven flour bread loaf",
            "climber": "bouldering crimp gym chalk route overhang climbing",
            "runner": "marathon tempo run miles race shoes",
        }
    )
    assert index.nearest("Try a crimpy overhang route at the climbing gym") == "climber"
    assert index.nearest("Bake a sourdough loaf tonight") == "baker"
    assert index.nearest("Something nice") is None  # no shared word: nobody


def test_half_width_is_zero_for_one_value_and_shrinks_with_more() -> None:
    assert half_width([1.0]) == 0.0
    assert half_width([0.0, 1.0] * 50) < half_width([0.0, 1.0] * 5)
