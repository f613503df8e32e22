"""Stage 2's batches: examples as encoder vectors, padded, in a seeded endless order."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from curp_chain.model.style import with_style
from curp_chain.training.examples import Example


@dataclass
class Encoded:
    """An example's vectors: history items (N, D) (quantized unless the codebook trains) and
    the query, the encoder vector of the whole user message, as the runtime computes it."""

    items: Tensor
    query: Tensor


def pad_items(encoded: Sequence[Encoded], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(B, N, D) items, (B, N) mask, (B, D) queries."""
    length = max(len(e.items) for e in encoded)
    dim = encoded[0].items.shape[1]
    items = torch.zeros(len(encoded), length, dim)
    mask = torch.zeros(len(encoded), length, dtype=torch.bool)
    for row, e in enumerate(encoded):
        items[row, : len(e.items)] = e.items
        mask[row, : len(e.items)] = True
    queries = torch.stack([e.query for e in encoded])
    return items.to(device), mask.to(device), queries.to(device)


def encode_examples(
    examples: Sequence[Example],
    cache: Any,
    quantize: Callable[[Tensor], Tensor] | None,
    *,
    style_dim: int,
    progress: bool,
) -> list[Encoded]:
    """Each example's history items (quantized when ``quantize`` is given) and query vector,
    with style features; every distinct text is encoded once."""
    texts = list(dict.fromkeys(t for e in examples for t in e.history))
    vectors = with_style(cache.get(texts, progress=progress), texts, style_dim)
    if quantize is not None:
        vectors = quantize(vectors)
    row = {t: i for i, t in enumerate(texts)}
    messages = [e.user_message for e in examples]
    queries = with_style(cache.get(messages, progress=progress), messages, style_dim)
    return [
        Encoded(vectors[[row[t] for t in e.history]], queries[i]) for i, e in enumerate(examples)
    ]


def example_index(position: int, n: int, seed: int) -> int:
    """The example at global ``position`` of the endless, per-epoch shuffled sequence."""
    epoch, within = divmod(position, n)
    return _epoch_order(n, seed + epoch)[within]


_ORDER_CACHE: dict[tuple[int, int], list[int]] = {}


def _epoch_order(n: int, seed: int) -> list[int]:
    key = (n, seed)
    if key not in _ORDER_CACHE:
        order = list(range(n))
        random.Random(seed).shuffle(order)
        _ORDER_CACHE.clear()
        _ORDER_CACHE[key] = order
    return _ORDER_CACHE[key]
