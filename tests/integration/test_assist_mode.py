"""Everyday requests answer the user from the assist checkpoint; write requests keep the write
checkpoint: real llama.cpp, the bundled checkpoints and encoder, in-memory SQLite."""

from __future__ import annotations

import shutil

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from safetensors.torch import load_file, save_file

from curp_chain import CurpChatModel
from curp_chain.errors import CurpError
from curp_chain.model.checkpoint import ASSIST_CHECKPOINT, DEFAULT_CHECKPOINT, LAMP7_CHECKPOINT
from curp_chain.model.item_words import with_words, words_line
from curp_chain.runtime.prompt import ChatTurn
from curp_chain.tasks import RedditTask
from curp_chain.tasks.assist_task import ASSIST_SYSTEM

BAKER = [
    "Third sourdough loaf this week, the crumb is finally open.",
    "Fed the starter at 6am, it doubled by noon.",
    "Rye and spelt bread for the farmers market on Saturday.",
]
CLIMBER = [
    "Sent my first V5 at the bouldering gym tonight, forearms are toast.",
    "New climbing shoes are tight but the edging is unreal.",
    "Weekend trip to the crag, chalk everywhere.",
]
EVERYDAY = "What should I cook for dinner tonight?"

pytestmark = pytest.mark.skipif(
    not ASSIST_CHECKPOINT.is_dir(), reason="the assist checkpoint is not bundled"
)


@pytest.fixture
def model(llama_backend, memory_store) -> CurpChatModel:
    model = CurpChatModel(backend=llama_backend, history_store=memory_store, max_tokens=12)
    model.add_history("baker", BAKER)
    return model


def _mode(reply) -> str:
    return reply.response_metadata["curp"]["mode"]


def test_an_everyday_request_is_answered_from_the_assist_checkpoint(model) -> None:
    reply = model.invoke(EVERYDAY, user_id="baker")
    assert _mode(reply) == "assist"
    assert reply.response_metadata["curp"]["personalized"] is True
    assist = model.get_personalizer("assist")
    assert assist.user_model.config.chat_system_message == ASSIST_SYSTEM
    assert model.get_personalizer("write").user_model.config.chat_system_message != ASSIST_SYSTEM
    # The assist system message is what a request without one gets.
    explicit = model.invoke([SystemMessage(ASSIST_SYSTEM), HumanMessage(EVERYDAY)], user_id="baker")
    assert explicit.content == reply.content


def test_an_everyday_reply_says_which_words_of_the_history_stand_before_the_request(
    model,
) -> None:
    words = model.invoke(EVERYDAY, user_id="baker").response_metadata["curp"]["words"]
    decoder = model.get_personalizer("assist").item_words
    assert decoder is not None and words
    assert set(words) <= set(decoder.config.vocabulary)
    prompt = model._prepare([HumanMessage(EVERYDAY)], None, {"user_id": "baker"}).prompt
    assert with_words(EVERYDAY, words) in prompt.after  # the user turn, after the soft tokens
    assert model.invoke(EVERYDAY).response_metadata["curp"]["words"] == []  # no user
    write = model.invoke(EVERYDAY, user_id="baker", mode="write")
    assert write.response_metadata["curp"]["words"] == []  # the write checkpoint has none


def test_the_reply_may_not_echo_the_words_line(model) -> None:
    # The backends enforce no_echo (test_backends.py); a small model otherwise repeats the
    # line instead of answering.
    prepared = model._prepare([HumanMessage(EVERYDAY)], None, {"user_id": "baker"})
    assert prepared.personalization.words
    assert prepared.params.no_echo == (words_line(prepared.personalization.words),)
    assert model._prepare([HumanMessage(EVERYDAY)], None, {}).params.no_echo == ()  # no words


def test_two_users_with_different_histories_get_different_words(model) -> None:
    model.add_history("climber", CLIMBER)
    words = {
        user: model.invoke(EVERYDAY, user_id=user).response_metadata["curp"]["words"]
        for user in ("baker", "climber")
    }
    assert words["baker"] != words["climber"]


def test_stored_codes_serve_both_checkpoints(model) -> None:
    assist, write = model.get_personalizer("assist"), model.get_personalizer("write")
    assert assist.codebook_version == write.codebook_version
    assert assist.user_model is not write.user_model


def test_a_write_task_request_and_mode_write_keep_the_write_checkpoint(model) -> None:
    turns = RedditTask().request("Finals are over, what is everyone baking?")
    kinds = {"system": SystemMessage, "user": HumanMessage}
    messages = [kinds[t.role](t.content) for t in turns]
    assert _mode(model.invoke(messages, user_id="baker")) == "write"
    assert _mode(model.invoke(EVERYDAY, user_id="baker", mode="write")) == "write"
    assert _mode(model.bind(mode="write").invoke(EVERYDAY, user_id="baker")) == "write"
    writer = model.model_copy(update={"mode": "write"})
    assert writer.route_of([ChatTurn("user", EVERYDAY)]) == "write"


def test_a_checkpoint_of_ones_own_serves_both_routes_unless_an_assist_one_is_named(
    llama_backend, memory_store
) -> None:
    own = CurpChatModel(
        backend=llama_backend, history_store=memory_store, checkpoint=str(LAMP7_CHECKPOINT)
    )
    assert own.get_personalizer("assist") is own.get_personalizer("write")
    named = CurpChatModel(
        backend=llama_backend,
        history_store=memory_store,
        checkpoint=str(DEFAULT_CHECKPOINT),
        assist_checkpoint=str(ASSIST_CHECKPOINT),
    )
    assert named.get_personalizer("assist") is not named.get_personalizer("write")


def test_an_assist_checkpoint_with_another_codebook_is_refused(
    llama_backend, memory_store, tmp_path
) -> None:
    other = tmp_path / "other-codebook"
    # Without its item-word decoder, which would be refused first for the same reason.
    shutil.copytree(ASSIST_CHECKPOINT, other, ignore=shutil.ignore_patterns("item_words.*"))
    weights = load_file(other / "model.safetensors")
    weights["quantizer.prototypes"] = weights["quantizer.prototypes"] + 0.01
    save_file(weights, other / "model.safetensors")
    model = CurpChatModel(
        backend=llama_backend, history_store=memory_store, assist_checkpoint=str(other)
    )
    model.add_history("baker", BAKER)
    with pytest.raises(CurpError, match="another codebook than the write checkpoint"):
        model.invoke(EVERYDAY, user_id="baker")
    assert len(memory_store.get_items("baker")) == len(BAKER)  # nothing stored is lost
