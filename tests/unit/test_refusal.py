"""The refusal detector on replies SmolLM2-135M-Instruct really gave (benchmarks/everyday_chat.py,
the issue's examples), both ways."""

from __future__ import annotations

import pytest

from curp_chain.data.refusal import is_degenerate, is_refusal, refusal_rate, refusal_reason

REFUSALS = [
    # Disclaimers: the model talks about being a chatbot instead of answering.
    (
        "I'm sorry for any misunderstanding, but as a chatbot designed to assist with digital "
        "services, I don't have the capability to provide personal recommendations or suggest "
        "activities.",
        "disclaimer",
    ),
    (
        "I'm sorry for any confusion, but as a chatbot designed to assist with grammar and "
        "punctuation, I don't have the capability to provide directions or answer questions "
        "about the weekend.",
        "disclaimer",
    ),
    (
        "I'm sorry for any confusion, but I'm not sure what you're asking. I'm a helpful AI "
        "named SmolLM, and I can help with that. I'm not a chatbot.",
        "disclaimer",
    ),
    ("As an AI, I don't have weekends, but I hope yours was great!", "disclaimer"),
    # "Cannot" statements without a disclaimer.
    ("I'm not equipped to provide recommendations or suggest activities.", "cannot"),
    ("I don't have personal experiences, but many people enjoy hiking.", "cannot"),
    ("Unfortunately, I cannot help with that request.", "cannot"),
    (
        "I'm sorry, but as a fan of music, I'm not equipped to recommend songs.",
        "cannot",
    ),
    # Apologies in place of an answer.
    (
        "I'm sorry for any mistakes, but I'm sorry for the inconvenience. I'm sorry I didn't "
        "have a better weekend than I did last year.",
        "apology",
    ),
    (
        "I'm sorry for your loss, but I'm sorry for any other losses you may have suffered. "
        "I'm here to help you with whatever you're going through.",
        "apology",
    ),
    ("I'm sorry, but I'm not sure what you're asking. What's your problem?", "apology"),
]

ANSWERS = [
    "I was at the beach, and I did a little bit of everything: I went to the beach, I did a "
    "bunch of yoga, I did some hiking.",
    "I'm glad you asked for plans. I'm happy to help with any plans you have. Whether it's a "
    "weekend getaway, a wedding, or just a fun activity, I'm here to assist.",
    "The night of the big reveal. I'm not a cook, but I'm here to help. I can suggest some "
    "delicious options, but I'll also suggest some healthy alternatives.",
    "I'm glad you're planning your weekend! I'm sure you'll have a fantastic time. What's your "
    "plan?",
    "Awesome! I'm glad you're enjoying your meal. I'm sure you'll find something delicious to "
    "share with your friends.",
    # Phrases that look like refusals out of context but are answers.
    "Hey! Running ten minutes late, can't wait to see you, sorry!",
    "I can't wait for the weekend: a long run on Saturday and brunch on Sunday.",
    "Don't forget sunscreen, a towel and a good book for the beach.",
    "The capital of France is Paris.",
    # Sympathy opens an answer; it is not an apology for not answering.
    "I'm so sorry to hear that you're feeling unmotivated. It's completely normal to have a "
    "busy schedule.",
]


@pytest.mark.parametrize(("reply", "kind"), REFUSALS)
def test_refusals_are_detected_with_their_kind(reply: str, kind: str) -> None:
    assert is_refusal(reply)
    assert refusal_reason(reply) == kind


@pytest.mark.parametrize("reply", ANSWERS)
def test_answers_are_not_refusals(reply: str) -> None:
    assert not is_refusal(reply), refusal_reason(reply)


def test_refusal_rate_counts_the_refused_share() -> None:
    assert refusal_rate([REFUSALS[0][0], ANSWERS[0], ANSWERS[1], REFUSALS[1][0]]) == 0.5
    assert refusal_rate([]) == 0.0


@pytest.mark.parametrize(
    ("reply", "sent"),
    [
        (
            "@french_lady @french_babylonian @frenchbabylonians @french-babyloniababyloni",
            "Can you recommend something to do tonight?",
        ),
        ("🍏🍏\n\n🍏❤🍏✨🍏♪🍏#🍏 #🍏 @🍏@🍏 🍏", "What should I cook tonight?"),
        ("How are you doing today?", "How are you doing today?"),
        ("@Plans for the weekend?", "Plans for the weekend?"),
        ("", "Tell me a joke."),
    ],
)
def test_replies_that_answer_nothing_are_degenerate(reply: str, sent: str) -> None:
    assert is_degenerate(reply, sent)


@pytest.mark.parametrize(
    "reply",
    [
        "I'm doing great! 😊",
        "🌱🌱 My weekend is a mix of adventure and relaxation. I love exploring new places.",
        "You can make a delicious rice cake with leftover rice!",
        "Dear @john_john,\n\nI hope this message finds you well. Thank you for your help.",
    ],
)
def test_answers_with_some_emoji_or_mentions_are_not_degenerate(reply: str) -> None:
    assert not is_degenerate(reply, "Write a tweet about my weekend.")
