"""The folded serving path computes what CurpUserModel computes."""

from __future__ import annotations

import pytest
import torch

from curp_chain.model.checkpoint import load_checkpoint
from curp_chain.model.config import CurpConfig
from curp_chain.model.folded import FoldedUserModel
from curp_chain.model.user_model import CurpUserModel


def _randomized(config: CurpConfig) -> CurpUserModel:
    """A model with every weight and the projector's running mean random (an initial
    model's zero last layer would hide the projector's offset path)."""
    model = CurpUserModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
        model.projector.offset_mean.normal_(0.0, 0.2)
    return model


def _reference(
    model: CurpUserModel, codes: torch.Tensor, query: torch.Tensor, use_query_token: bool
) -> torch.Tensor:
    mask = torch.ones(1, len(codes), dtype=torch.bool)
    with torch.no_grad():
        return model(codes[None], mask, query[None], use_query_token=use_query_token)[0]


@pytest.mark.parametrize("items", [1, 3, 24, 300])
@pytest.mark.parametrize("use_query_token", [True, False])
def test_bundled_checkpoint_matches_the_module(items: int, use_query_token: bool) -> None:
    model = load_checkpoint().eval()
    config = model.config
    codes = torch.randint(0, config.codebook_size, (items, config.num_subspaces))
    query = torch.randn(config.item_dim)
    folded = FoldedUserModel(model).soft_tokens(codes, query, use_query_token=use_query_token)
    expected = _reference(model, codes, query, use_query_token)
    assert folded.shape == expected.shape
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("num_trait_tokens", "query_aware"), [(4, True), (0, True), (3, False), (1, True)]
)
def test_random_weights_and_shapes_match_the_module(
    num_trait_tokens: int, query_aware: bool
) -> None:
    config = CurpConfig(
        num_subspaces=4,
        codebook_size=16,
        encoder_dim=32,
        model_dim=16,
        num_heads=2,
        projector_hidden=24,
        llm_hidden_size=20,
        num_trait_tokens=num_trait_tokens,
        query_aware=query_aware,
    )
    model = _randomized(config)
    codes = torch.randint(0, 16, (7, 4))
    query = torch.randn(config.item_dim)
    folded = FoldedUserModel(model).soft_tokens(codes, query)
    torch.testing.assert_close(folded, _reference(model, codes, query, True), atol=1e-5, rtol=1e-4)


def test_bad_inputs_are_refused_with_the_module_s_messages() -> None:
    model = load_checkpoint()
    folded = FoldedUserModel(model)
    m = model.config.num_subspaces
    with pytest.raises(ValueError, match="at least one history item"):
        folded.soft_tokens(torch.zeros(0, m, dtype=torch.long), torch.zeros(model.config.item_dim))
    with pytest.raises(ValueError, match="shape"):
        folded.soft_tokens(torch.zeros(2, m + 1, dtype=torch.long), None)
    with pytest.raises(ValueError, match="query-aware"):
        folded.soft_tokens(torch.zeros(2, m, dtype=torch.long), None)
