"""The refusal detector's paraphrase mode, which the paraphrase source check uses."""

from __future__ import annotations

import pytest

from curp_chain.data.refusal import is_refusal, refusal_reason
from curp_chain.data.sources import check_paraphrase

TWEET = "omg the train was late AGAIN this morning #commute"


@pytest.mark.parametrize(
    ("rewrite", "kind"),
    [
        # Every phrase the paraphrase check has always rejected, wherever it stands.
        ("The train was late, I'm sorry to say.", "apology"),
        ("Im sorry the train was late again.", "apology"),
        ("The train, I apologise, was late again.", "apology"),
        ("I can't believe the train was late again!", "cannot"),
        ("I cannot stand the late train this morning.", "cannot"),
        ("I'm unable to rewrite this tweet.", "cannot"),
        ("I am not able to paraphrase that.", "cannot"),
        ("As an AI, the train does not concern me.", "disclaimer"),
        ("This is a language model's rewrite of the tweet.", "disclaimer"),
        ("That tweet is inappropriate.", "objection"),
        ("Rewriting offensive content is not something I do.", "objection"),
        # And what the reply detector rejects besides.
        ("I'm a chatbot, so here is the train tweet again.", "disclaimer"),
        ("I don't have personal experiences of trains.", "cannot"),
    ],
)
def test_paraphrase_mode_rejects_the_model_talking_anywhere(rewrite: str, kind: str) -> None:
    assert refusal_reason(rewrite, paraphrase=True) == kind
    assert check_paraphrase(TWEET, rewrite).status == "refusal"


def test_an_opening_unfortunately_is_a_rewritten_complaint_not_a_refusal() -> None:
    rewrite = "Unfortunately, the train was late again this morning."
    assert is_refusal(rewrite)  # as a chat reply it declines
    assert refusal_reason(rewrite, paraphrase=True) is None
    assert check_paraphrase(TWEET, rewrite).status == "ok"


def test_a_phrase_the_tweet_says_itself_is_kept_in_its_rewrite() -> None:
    tweet = "i cant believe the train was late AGAIN this morning #commute"
    rewrite = "I can't believe my train was late again today."
    assert check_paraphrase(TWEET, rewrite).status == "refusal"
    assert check_paraphrase(tweet, rewrite).status == "ok"
