"""The sentence encoder on the bundled MiniLM."""

from __future__ import annotations

import torch


def test_length_sorted_batches_keep_the_input_order(encoder) -> None:
    texts = ["a much longer text about running " * 8, "short", "medium length text here", "x"]
    encoder.batch_size = 2  # the long and the short text land in different batches
    try:
        together = encoder.encode(texts)
    finally:
        encoder.batch_size = 64
    alone = torch.cat([encoder.encode([t]) for t in texts])
    assert together.shape == (4, 384)
    assert torch.allclose(together, alone, atol=1e-4)
    assert not torch.allclose(together[0], together[1], atol=1e-2)


def test_vectors_can_feed_training(encoder) -> None:
    """The encoder runs in inference mode, but what it returns is an ordinary tensor."""
    weight = torch.ones(384, requires_grad=True)
    for texts in (["one text"], ["two", "texts"]):
        (encoder.encode(texts) @ weight).sum().backward()
    assert weight.grad is not None
