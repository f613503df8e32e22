"""What CURP knows about a user: their codes, what each code stands for, what each subspace does.

Every history item is stored as one prototype index per codebook subspace. This module reads
a user's codes back from the store and sets them beside the population's (every user in the
store): how often the user uses each prototype, which of the user's items map to it, which
items across the store are most typical of it (nearest to the prototype in that subspace),
and, for one request and reply, how much each subspace's codes move the reply's likelihood.
``curp inspect`` (:mod:`curp_chain.cli.inspect`) prints it; :func:`plot_usage` draws it.

Named ``inspection`` rather than ``inspect`` so that it never shadows the standard library.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from curp_chain.errors import CurpError
from curp_chain.interfaces.history import validate_user_id
from curp_chain.personalization.personalizer import Personalizer


@dataclass(frozen=True)
class StoredItem:
    user_id: str
    item_id: int
    text: str
    codes: tuple[int, ...]


@dataclass(frozen=True)
class CodeUse:
    """One prototype the user uses: their items that map to it, the store's most typical."""

    subspace: int
    code: int
    own: list[str]
    typical: list[StoredItem]
    """Items across the store with this code, nearest to the prototype first."""


@dataclass(frozen=True)
class SubspaceShift:
    """The reply's log-likelihood with the user's own codes minus with one subspace's codes
    replaced by the population's most common prototype there (positive: the user's codes in
    this subspace make the reply likelier)."""

    subspace: int
    replaced_by: int
    changed_items: int
    delta: float
    """Summed over the reply's tokens, in nats."""


@dataclass
class Inspection:
    user_id: str
    subspace_names: list[str]
    codebook_size: int
    items: list[StoredItem]
    """The user's items, newest first."""
    used_for_soft_tokens: int
    population_users: int
    population_items: int
    user_counts: list[Counter[int]]
    population_counts: list[Counter[int]]
    codes: list[CodeUse] = field(default_factory=list)
    request: str | None = None
    reply: str | None = None
    reply_logprob: float | None = None
    no_soft_logprob: float | None = None
    shifts: list[SubspaceShift] = field(default_factory=list)


def subspace_names(personalizer: Personalizer) -> list[str]:
    """Which part of the item vector each subspace quantizes ("text 0-23", ..., "style")."""
    config = personalizer.user_model.config
    width = config.item_dim // config.num_subspaces
    names = []
    for m in range(config.num_subspaces):
        start, end = m * width, (m + 1) * width
        if start >= config.encoder_dim:
            names.append("style")
        elif end <= config.encoder_dim:
            names.append(f"text {start}-{end - 1}")
        else:
            names.append(f"text+style {start}-{end - 1}")
    return names


def stored_items(personalizer: Personalizer, user_id: str) -> list[StoredItem]:
    """The user's items with their codes, newest first; items not yet encoded with this
    codebook are encoded now (not saved: inspecting never writes)."""
    store = personalizer.store
    items = store.get_items(user_id)
    cached = store.get_codes(user_id, personalizer.codebook_version)
    codes = {entry.item_id: entry.codes for entry in cached.encoded}
    stale = [item for item in items if item.id not in codes]
    if stale:
        fresh = personalizer.encode_codes([item.text for item in stale])
        for item, row in zip(stale, fresh, strict=True):
            codes[item.id] = tuple(int(c) for c in row)
    return [StoredItem(user_id, item.id, item.text, codes[item.id]) for item in items]


def count_codes(rows: Sequence[Sequence[int]], num_subspaces: int) -> list[Counter[int]]:
    return [Counter(int(row[m]) for row in rows) for m in range(num_subspaces)]


def population_codes(
    personalizer: Personalizer, max_users: int
) -> dict[str, dict[int, tuple[int, ...]]]:
    """item id -> codes for the store's first ``max_users`` users (cached codes only: items
    never encoded with this codebook are left out)."""
    users = personalizer.store.list_users()[:max_users]
    version = personalizer.codebook_version
    population = {}
    for user in users:
        cached = personalizer.store.get_codes(user.user_id, version)
        population[user.user_id] = {entry.item_id: entry.codes for entry in cached.encoded}
    return population


def typical_items(
    personalizer: Personalizer,
    population: dict[str, dict[int, tuple[int, ...]]],
    wanted: Sequence[tuple[int, int]],
    limit: int,
    candidates: int = 48,
) -> dict[tuple[int, int], list[StoredItem]]:
    """For each (subspace, code), up to ``limit`` store items with that code, nearest to the
    prototype in that subspace first. At most ``candidates`` items per code are ranked."""
    chosen: dict[tuple[int, int], list[tuple[str, int]]] = {key: [] for key in wanted}
    for user_id, rows in population.items():
        for item_id, codes in rows.items():
            for m, k in wanted:
                if codes[m] == k and len(chosen[(m, k)]) < candidates:
                    chosen[(m, k)].append((user_id, item_id))
    texts = _texts(personalizer, {u for pairs in chosen.values() for u, _ in pairs})
    keys = sorted({pair for pairs in chosen.values() for pair in pairs})
    if not keys:
        return {key: [] for key in wanted}
    quantizer = personalizer.user_model.quantizer
    with torch.no_grad():
        parts = quantizer.split(personalizer.item_vectors([texts[key] for key in keys]))
    row_of = {key: i for i, key in enumerate(keys)}
    result = {}
    for (m, k), pairs in chosen.items():
        prototype = quantizer.prototypes[m, k].detach()
        scored = sorted(
            pairs, key=lambda pair: float((parts[row_of[pair], m] - prototype).pow(2).sum())
        )
        result[(m, k)] = [
            StoredItem(u, i, texts[(u, i)], population[u][i]) for u, i in scored[:limit]
        ]
    return result


def _texts(personalizer: Personalizer, users: set[str]) -> dict[tuple[str, int], str]:
    texts = {}
    for user_id in users:
        for item in personalizer.store.get_items(user_id):
            texts[(user_id, item.id)] = item.text
    return texts


def inspect_user(
    personalizer: Personalizer,
    user_id: str,
    *,
    codes_per_subspace: int = 2,
    examples: int = 3,
    max_users: int = 1000,
) -> Inspection:
    """The user's codes beside the population's, with the user's most used prototypes per
    subspace explained by the user's own items and the store's most typical ones."""
    user_id = validate_user_id(user_id)
    items = stored_items(personalizer, user_id)
    if not items:
        raise CurpError(f"user {user_id!r} has no history in this store")
    config = personalizer.user_model.config
    m_count = config.num_subspaces
    population = population_codes(personalizer, max_users)
    population[user_id] = {item.item_id: item.codes for item in items}
    all_rows = [codes for rows in population.values() for codes in rows.values()]
    user_counts = count_codes([item.codes for item in items], m_count)
    wanted = [
        (m, k) for m in range(m_count) for k, _ in user_counts[m].most_common(codes_per_subspace)
    ]
    typical = typical_items(personalizer, population, wanted, examples)
    uses = [
        CodeUse(m, k, [i.text for i in items if i.codes[m] == k][:examples], typical[(m, k)])
        for m, k in wanted
    ]
    return Inspection(
        user_id=user_id,
        subspace_names=subspace_names(personalizer),
        codebook_size=config.codebook_size,
        items=items,
        used_for_soft_tokens=min(len(items), config.max_history_items),
        population_users=len(population),
        population_items=len(all_rows),
        user_counts=user_counts,
        population_counts=count_codes(all_rows, m_count),
        codes=uses,
    )


def _summed_logprob(scorer: Any, prompt: Any, reply: str) -> float:
    from curp_chain.runtime.scoring import collate, teacher_forced_example, token_losses

    soft = torch.from_numpy(prompt.soft) if prompt.soft is not None else None
    example = teacher_forced_example(scorer, prompt.before, soft, prompt.after, reply)
    with torch.no_grad():
        total, _ = token_losses(scorer.model, collate([example]))
    return -float(total[0])


def likelihood_shifts(
    inspection: Inspection,
    personalizer: Personalizer,
    scorer: Any,
    turns: Sequence[Any],
    reply: str,
) -> None:
    """Fill ``inspection``'s reply scores: the reply's log-likelihood (teacher-forced, through
    the transformers backend ``scorer``) with the user's soft tokens, with none, and with each
    subspace's codes replaced by the population's most common prototype there."""
    from curp_chain.runtime.prompt import build_soft_prompt

    def score(codes: np.ndarray | None) -> float:
        soft = None if codes is None else personalizer.soft_tokens_from_codes(codes.tolist(), query)
        prompt = build_soft_prompt(scorer.chat_template, turns, soft, scorer.special_tokens)
        return _summed_logprob(scorer, prompt, reply)

    query = next((t.content for t in reversed(turns) if t.role == "user"), "")
    used = inspection.items[: inspection.used_for_soft_tokens]
    own = np.asarray([item.codes for item in used], dtype=np.int64)
    inspection.reply = reply
    inspection.reply_logprob = score(own)
    inspection.no_soft_logprob = score(None)
    for m, counts in enumerate(inspection.population_counts):
        mode = counts.most_common(1)[0][0]
        replaced = own.copy()
        replaced[:, m] = mode
        changed = int((own[:, m] != mode).sum())
        delta = 0.0 if not changed else inspection.reply_logprob - score(replaced)
        inspection.shifts.append(SubspaceShift(m, mode, changed, delta))


def plot_usage(inspection: Inspection, path: str) -> None:
    """One panel per subspace: the share of items on each prototype, the user's against the
    population's. Needs matplotlib (``pip install 'curp-chain[eval]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from curp_chain.errors import MissingDependencyError

        raise MissingDependencyError(
            "--plot needs matplotlib; run: pip install 'curp-chain[eval]'"
        ) from None
    count = len(inspection.subspace_names)
    columns = min(count, 6)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.2 * rows), squeeze=False)
    x = np.arange(inspection.codebook_size)
    for m, axis in enumerate(axes.flat):
        if m >= count:
            axis.axis("off")
            continue
        for counts, label, width in (
            (inspection.population_counts[m], "population", 1.0),
            (inspection.user_counts[m], inspection.user_id, 0.5),
        ):
            total = max(sum(counts.values()), 1)
            axis.bar(x, [counts.get(int(k), 0) / total for k in x], width=width, label=label)
        axis.set_title(f"{m}: {inspection.subspace_names[m]}", fontsize=8)
        axis.tick_params(labelsize=6)
    axes.flat[0].legend(fontsize=6)
    figure.suptitle(f"prototype usage: {inspection.user_id} against the store")
    figure.supxlabel("prototype")
    figure.supylabel("share of items")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
