"""Product quantizer and user model invariants, on small real tensors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from curp_chain.model.config import CurpConfig
from curp_chain.model.quantizer import ProductQuantizer, squared_distances
from curp_chain.model.user_model import CurpUserModel

SMALL = dict(
    encoder_dim=16,
    num_subspaces=4,
    codebook_size=8,
    model_dim=8,
    num_heads=2,
    projector_hidden=12,
    llm_hidden_size=10,
    num_trait_tokens=3,
)


def test_decode_of_codes_equals_quantized_in_eval_mode() -> None:
    torch.manual_seed(0)
    quantizer = ProductQuantizer(16, 4, 8).eval()
    x = torch.randn(5, 7, 16)
    out = quantizer(x)
    assert out.codes.shape == (5, 7, 4)
    assert out.codes.dtype == torch.long
    assert torch.equal(quantizer.decode(out.codes), out.quantized)
    assert out.loss.item() == 0.0


def test_codes_pick_the_nearest_prototype_per_subspace() -> None:
    torch.manual_seed(1)
    quantizer = ProductQuantizer(16, 4, 8)
    x = torch.randn(20, 16)
    codes = quantizer.encode(x)
    parts = x.reshape(20, 4, 4)
    for m in range(4):
        brute = torch.cdist(parts[:, m], quantizer.prototypes[m].detach()).argmin(-1)
        assert torch.equal(codes[:, m], brute)


def test_squared_distances_match_cdist() -> None:
    torch.manual_seed(2)
    parts, prototypes = torch.randn(6, 3, 5), torch.randn(3, 4, 5)
    ours = squared_distances(parts, prototypes)
    for m in range(3):
        assert torch.allclose(ours[:, m], torch.cdist(parts[:, m], prototypes[m]) ** 2, atol=1e-4)


def test_training_mode_passes_gradients_straight_through() -> None:
    quantizer = ProductQuantizer(16, 4, 8).train()
    x = torch.randn(3, 16, requires_grad=True)
    out = quantizer(x)
    (out.quantized.sum() + out.loss).backward()
    assert x.grad is not None and torch.all(x.grad != 0)
    assert quantizer.prototypes.grad is not None
    assert out.loss.item() > 0


def test_version_changes_when_prototypes_change() -> None:
    quantizer = ProductQuantizer(16, 4, 8)
    before = quantizer.version("enc")
    assert before == quantizer.version("enc")
    assert before != quantizer.version("other-encoder")
    with torch.no_grad():
        quantizer.prototypes[0, 0, 0] += 1.0
    assert quantizer.version("enc") != before


def test_decode_rejects_codes_of_another_codebook() -> None:
    with pytest.raises(ValueError, match="4 subspaces"):
        ProductQuantizer(16, 4, 8).decode(torch.zeros(2, 3, dtype=torch.long))


@settings(max_examples=25, deadline=None)
@given(n_items=st.integers(1, 9), batch=st.integers(1, 3), query_aware=st.booleans())
def test_soft_token_shapes(n_items: int, batch: int, query_aware: bool) -> None:
    config = CurpConfig(**SMALL, query_aware=query_aware)
    model = CurpUserModel(config).eval()
    codes = torch.randint(0, 8, (batch, n_items, 4))
    mask = torch.ones(batch, n_items, dtype=torch.bool)
    soft = model(codes, mask, torch.randn(batch, 16) if query_aware else None)
    assert soft.shape == (batch, 3 + int(query_aware), 10)
    assert torch.isfinite(soft).all()


def randomised_offset(model: CurpUserModel) -> CurpUserModel:
    """The model with its history offset switched on (it starts at zero)."""
    offset_layer = model.projector.mlp[2]
    assert isinstance(offset_layer, torch.nn.Linear)
    torch.nn.init.normal_(offset_layer.weight, std=0.5)
    return model


def test_a_fresh_model_gives_every_user_the_base_prompt() -> None:
    torch.manual_seed(0)
    model = CurpUserModel(CurpConfig(**SMALL)).eval()
    mask = torch.ones(2, 5, dtype=torch.bool)
    soft = model(torch.randint(0, 8, (2, 5, 4)), mask, torch.randn(2, 16))
    base = model.projector.base
    assert torch.equal(soft[0], soft[1]) and torch.allclose(soft[0], base)
    assert soft.shape == (2, 4, 10)


def test_history_offset_is_centred_over_users() -> None:
    torch.manual_seed(1)
    model = randomised_offset(CurpUserModel(CurpConfig(**SMALL))).train()
    codes, mask = torch.randint(0, 8, (6, 5, 4)), torch.ones(6, 5, dtype=torch.bool)
    query = torch.randn(6, 16)
    soft, shared_offset = model.projected(model.quantizer.decode(codes), mask, query)
    offsets = soft - model.projector.base
    assert offsets.abs().max() > 0.01  # users differ ...
    assert torch.allclose(offsets.mean(0), torch.zeros_like(offsets[0]), atol=1e-5)  # ... around 0
    assert shared_offset > 0
    # Serving centres on the running mean of the training batches' means.
    assert model.projector.offset_mean.abs().max() > 0
    model.eval()
    served = model(codes, mask, query)
    shift = served - soft
    assert torch.allclose(shift, shift[:1].expand_as(shift), atol=1e-5)  # one shift for all users
    with pytest.raises(ValueError, match="at least 2 examples"):
        model.train()(codes[:1], mask[:1], query[:1])


def test_padding_items_do_not_change_soft_tokens() -> None:
    torch.manual_seed(3)
    model = randomised_offset(CurpUserModel(CurpConfig(**SMALL))).eval()
    codes = torch.randint(0, 8, (1, 4, 4))
    query = torch.randn(1, 16)
    plain = model(codes, torch.ones(1, 4, dtype=torch.bool), query)
    padded_codes = torch.cat([codes, torch.randint(0, 8, (1, 3, 4))], dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    assert torch.allclose(model(padded_codes, mask, query), plain, atol=1e-5)
    other = model(torch.randint(0, 8, (1, 4, 4)), torch.ones(1, 4, dtype=torch.bool), query)
    assert not torch.allclose(other, plain, atol=1e-3)


def test_a_user_without_items_is_rejected() -> None:
    model = CurpUserModel(CurpConfig(**SMALL)).eval()
    with pytest.raises(ValueError, match="at least one history item"):
        model(
            torch.zeros(1, 2, 4, dtype=torch.long),
            torch.zeros(1, 2, dtype=torch.bool),
            torch.randn(1, 16),
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"encoder_dim": 384, "num_subspaces": 7}, "not divisible by num_subspaces=7"),
        ({"model_dim": 10, "num_heads": 4}, "not divisible by num_heads=4"),
        ({"num_trait_tokens": 0, "query_aware": False}, "leaves no soft token"),
        ({"codebook_size": 1}, "greater than or equal to 2"),
        ({"unknown_field": 1}, "Extra inputs are not permitted"),
        ({"format_version": 99}, "format_version=99 is not supported"),
    ],
)
def test_config_rejects_bad_values_with_a_message(overrides: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CurpConfig(**overrides)
