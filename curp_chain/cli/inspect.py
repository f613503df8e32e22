"""``curp inspect --user U``: print (and optionally plot) what CURP knows about one user."""

from __future__ import annotations

import argparse
from typing import Any

from curp_chain.cli.common import ModelOptions, open_chat_model
from curp_chain.cli.options import add_command, parse_options
from curp_chain.personalization.inspection import (
    Inspection,
    inspect_user,
    likelihood_shifts,
    plot_usage,
)

DESCRIPTION = (
    "Show a user's codes per codebook subspace next to the population's (every user in the "
    "store); for the user's most used prototypes, the user's own items that map to each and "
    "the store's most typical items for it (nearest to the prototype). With --request, also "
    "how much each subspace moves the log-likelihood of a reply (--reply, or the greedy reply "
    "generated for the user): the reply is scored with the user's soft tokens and with one "
    "subspace's codes replaced by the population's most common prototype there, through the "
    "transformers backend on the same weights."
)


class InspectOptions(ModelOptions):
    """`curp inspect`."""

    user: str
    """user id"""
    codes: int = 2
    """prototypes shown per subspace"""
    examples: int = 3
    """items shown per prototype"""
    max_users: int = 1000
    """users of the store read as the population"""
    request: str | None = None
    """score a reply to this request, subspace by subspace"""
    reply: str | None = None
    """the reply to score (default: the generated one)"""
    max_tokens: int = 48
    """longest generated reply to score, in tokens"""
    plot: str | None = None
    """draw the user's prototype usage against the store (PNG)"""


def _short(text: str, width: int = 90) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _usage_line(inspection: Inspection, m: int) -> str:
    user = inspection.user_counts[m]
    population = inspection.population_counts[m]
    total = sum(population.values())
    parts = [f"#{k}×{n} (store {population[k] / total:.0%})" for k, n in user.most_common()]
    return f"  {m:2d} {inspection.subspace_names[m]:>12s}: {len(user)} codes  " + ", ".join(parts)


def format_report(inspection: Inspection) -> str:
    lines = [
        f"user {inspection.user_id}: {len(inspection.items)} items "
        f"({inspection.used_for_soft_tokens} newest make the soft tokens); store: "
        f"{inspection.population_users} users, {inspection.population_items} items",
        "",
        "codes per subspace (prototype×items of this user, its share of the store's items):",
    ]
    lines += [_usage_line(inspection, m) for m in range(len(inspection.subspace_names))]
    lines += ["", "most used prototypes: the user's items, then the store's most typical items"]
    for use in inspection.codes:
        name = inspection.subspace_names[use.subspace]
        lines.append(f"  subspace {use.subspace} ({name}), prototype #{use.code}")
        lines += [f"      own: {_short(text)}" for text in use.own]
        lines += [f"    store: [{s.user_id}] {_short(s.text)}" for s in use.typical]
    if inspection.reply is not None:
        lines += _shift_lines(inspection)
    return "\n".join(lines)


def _shift_lines(inspection: Inspection) -> list[str]:
    assert inspection.reply_logprob is not None and inspection.no_soft_logprob is not None
    lines = [
        "",
        f"request: {_short(inspection.request or '')}",
        f"reply:   {_short(inspection.reply or '')}",
        f"reply log-likelihood: {inspection.reply_logprob:.2f} nats with the user's soft "
        f"tokens, {inspection.no_soft_logprob:.2f} with none",
        "per subspace: own minus with its codes replaced by the store's most common prototype "
        "(positive: the user's codes there make the reply likelier)",
    ]
    for shift in sorted(inspection.shifts, key=lambda s: -abs(s.delta)):
        name = inspection.subspace_names[shift.subspace]
        lines.append(
            f"  {shift.subspace:2d} {name:>12s}: {shift.delta:+.3f}  "
            f"({shift.changed_items} items moved to #{shift.replaced_by})"
        )
    return lines


def cmd_inspect(args: argparse.Namespace) -> int:
    options = parse_options(args, InspectOptions)
    model = open_chat_model(options)
    personalizer = model.get_personalizer()
    inspection = inspect_user(
        personalizer,
        options.user,
        codes_per_subspace=options.codes,
        examples=options.examples,
        max_users=options.max_users,
    )
    if options.request:
        _score_reply(inspection, personalizer, model, options.request, options)
    print(format_report(inspection))
    if options.plot:
        plot_usage(inspection, options.plot)
        print(f"\nplot written to {options.plot}")
    return 0


def _score_reply(
    inspection: Inspection, personalizer: Any, model: Any, request: str, options: InspectOptions
) -> None:
    from langchain_core.messages import HumanMessage

    from curp_chain.chat.chat_model import to_chat_turns
    from curp_chain.runtime.defaults import open_hf_backend

    # As CurpChatModel builds a personalized request (no default system message with soft
    # tokens), so that the scores are those of the reply it serves.
    turns = to_chat_turns([HumanMessage(request)])
    reply = options.reply
    if reply is None:
        generated = model.invoke(request, user_id=options.user, max_tokens=options.max_tokens)
        reply = str(generated.content)
    inspection.request = request
    likelihood_shifts(inspection, personalizer, open_hf_backend(options.model_path), turns, reply)


def register(subparsers: Any) -> None:
    """Add ``inspect`` to the ``curp`` command's subparsers."""
    add_command(
        subparsers,
        "inspect",
        InspectOptions,
        cmd_inspect,
        help="show a user's codes and what they stand for",
        description=DESCRIPTION,
    )
