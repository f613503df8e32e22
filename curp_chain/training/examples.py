"""Stage 2's examples: what a user's history is, what they were asked, what they wrote.

Two sources build them: the generic format (:mod:`curp_chain.data.generic`: any task, any
users) and the LaMP-7 adapter's own path (PAN 2019 users with paraphrase sources, LaMP-7
users for validation), which predates the format and repeats earlier runs exactly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curp_chain.data.generic import (
    ExampleRecord,
    Histories,
    check_users,
    history_for,
    read_examples,
    read_histories,
)
from curp_chain.data.users import clean_profile, is_held_out
from curp_chain.errors import CurpError
from curp_chain.runtime.prompt import ChatTurn
from curp_chain.tasks.lamp7 import LAMP7_INSTRUCTION, LampExample, paraphrase_turns

MAX_PROMPT_CHARS = 600
"""Longest turn of a request in training: longer ones are cut, bounding sequence lengths."""


@dataclass(frozen=True)
class Example:
    """One teacher-forced example: the history stands for the user, the target is scored."""

    user_id: str
    history: tuple[str, ...]
    user_message: str
    """The last user turn; its encoder vector is the query, as at serving time."""
    target: str
    context: tuple[ChatTurn, ...] | None = None
    """The turns before the user message (system message, earlier exchanges); None for
    LaMP-7's paraphrase system message."""

    def turns(self, max_chars: int = MAX_PROMPT_CHARS) -> list[ChatTurn]:
        """The request as chat turns, each cut to ``max_chars`` characters."""
        if self.context is None:
            return paraphrase_turns(self.user_message[:max_chars])
        turns = [*self.context, ChatTurn("user", self.user_message)]
        return [ChatTurn(t.role, t.content[:max_chars]) for t in turns]

    @property
    def shown_input(self) -> str:
        """The user message without LaMP-7's instruction, for reports."""
        message = self.user_message
        return (
            message[len(LAMP7_INSTRUCTION) :] if message.startswith(LAMP7_INSTRUCTION) else message
        )


def derangement(n: int, seed: int) -> list[int]:
    """A permutation with no fixed point (for n >= 2): index i gets another user's history."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    result = [0] * n
    for position, index in enumerate(order):
        result[index] = order[(position + 1) % n]
    return result


# --- the LaMP-7 adapter's path -----------------------------------------------------------------


def training_examples(
    users: Sequence[Any],
    sources: dict[str, str],
    *,
    max_history: int,
    cleanup_fraction: float = 0.0,
    persona_fraction: float = 0.0,
    seed: int = 0,
) -> list[Example]:
    """Examples for every (user, tweet) with an accepted source: the user message is LaMP-7's
    instruction + the source, the target the tweet, the history the user's other tweets.
    ``cleanup_fraction`` of them additionally appear with a clean-up variant as source.
    ``persona_fraction`` of the users have all their tweets, history and target, rewritten
    by a style persona (:mod:`curp_chain.training.personas`); sources stay neutral."""
    from curp_chain.data.sources import cleanup_variant
    from curp_chain.training.codebook import history_texts
    from curp_chain.training.personas import apply_persona, persona_of

    rng = random.Random(seed)
    examples = []
    for user in users:
        persona = persona_of(user.user_id, persona_fraction, seed) if persona_fraction else ()

        def styled(text: str, persona: tuple[str, ...] = persona) -> str:
            return apply_persona(text, persona) if persona else text

        for tweet in user.texts:
            source = sources.get(tweet)  # sources are keyed by the original tweet
            if not source:
                continue
            history = tuple(styled(t) for t in history_texts(user.texts, tweet, max_history))
            if not history:
                continue
            target = styled(tweet)
            examples.append(Example(user.user_id, history, LAMP7_INSTRUCTION + source, target))
            if cleanup_fraction and rng.random() < cleanup_fraction:
                variant = cleanup_variant(tweet)
                if variant and variant != tweet:
                    examples.append(
                        Example(user.user_id, history, LAMP7_INSTRUCTION + variant, target)
                    )
    return examples


def validation_examples(queries: Sequence[LampExample], *, max_history: int) -> list[Example]:
    """LaMP-7 queries as examples: the cleaned profile (first ``max_history`` items) as
    history, the query's ``input`` as the user message, the gold tweet as target."""
    return [
        Example(q.id, clean_profile(q.profile_texts)[:max_history], q.input, q.gold)
        for q in queries
    ]


# --- the generic format ------------------------------------------------------------------------


def example_of(
    record: ExampleRecord,
    histories: Histories,
    *,
    max_history: int,
    persona: tuple[str, ...] = (),
) -> Example:
    """A generic example as a training example; a persona rewrites history and target."""
    from curp_chain.training.personas import apply_persona

    def styled(text: str) -> str:
        return apply_persona(text, persona) if persona else text

    turns = record.turns()
    return Example(
        record.user_id,
        tuple(styled(t) for t in history_for(record, histories, max_history)),
        turns[-1].content,
        styled(record.response),
        context=tuple(turns[:-1]),
    )


@dataclass
class GenericData:
    """Training and validation examples read from the generic format."""

    train: list[Example]
    validation: list[Example]
    summary: dict[str, Any]


def load_generic(
    examples_path: str | Path,
    histories_source: str | Path,
    *,
    max_history: int,
    held_out_fraction: float,
    seed: int,
    persona_fraction: float = 0.0,
    val_examples_path: str | Path | None = None,
) -> GenericData:
    """Examples of the training users (personas applied) and of the validation users: the
    users of ``val_examples_path`` when given, else the held-out fraction of the users of
    ``examples_path`` (the split `curp train codebook` makes). Examples whose user has no
    other history are dropped: without history there are no soft tokens to train."""
    from curp_chain.training.personas import persona_of

    records = read_examples(examples_path)
    histories = read_histories(histories_source)
    check_users(records, histories, str(examples_path))
    if val_examples_path is not None:
        val_records = read_examples(val_examples_path)
        check_users(val_records, histories, str(val_examples_path))
        train_records = records
    else:
        held = {r.user_id for r in records if is_held_out(r.user_id, held_out_fraction, seed)}
        train_records = [r for r in records if r.user_id not in held]
        val_records = [r for r in records if r.user_id in held]

    def persona(user: str) -> tuple[str, ...]:
        return persona_of(user, persona_fraction, seed) if persona_fraction else ()

    train = [
        example_of(r, histories, max_history=max_history, persona=persona(r.user_id))
        for r in train_records
    ]
    validation = [example_of(r, histories, max_history=max_history) for r in val_records]
    train = [e for e in train if e.history]
    validation = [e for e in validation if e.history]
    if not validation:
        raise CurpError(
            f"no validation examples in {examples_path}: no user with history was held out; "
            "raise --held-out-fraction or pass --val-examples FILE"
        )
    summary = {
        "examples": str(examples_path),
        "histories": str(histories_source),
        "validation_examples": str(val_examples_path or examples_path),
        "validation_users": len({e.user_id for e in validation}),
    }
    return GenericData(train, validation, summary)
