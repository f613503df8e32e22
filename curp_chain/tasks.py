"""How a LaMP-7 request is put to the model: shared by training, evaluation and the baselines.

Training and evaluation must build the request identically, or a soft prompt is evaluated
on a prompt it never saw.
"""

from __future__ import annotations

from curp_chain.prompt import ChatTurn

PARAPHRASE_SYSTEM = (
    "You paraphrase tweets. Reply with the paraphrased tweet only, nothing before or after it."
)
"""Replaces the model's default system message. On the first 30 LaMP-7 users it lifted the
plain prompt's ROUGE-1 from 0.355 to 0.405 (docs/experiments.md): without it SmolLM2 often
refuses or explains instead of paraphrasing."""


def paraphrase_turns(user_message: str) -> list[ChatTurn]:
    """The request: the system message, then the LaMP-7 input as the one user turn."""
    return [ChatTurn("system", PARAPHRASE_SYSTEM), ChatTurn("user", user_message)]
