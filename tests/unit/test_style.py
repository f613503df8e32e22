"""Style features: what they read from a text, and how they join the item vector."""

from __future__ import annotations

import pytest
import torch

from curp_chain.model.config import CurpConfig
from curp_chain.model.style import STYLE_DIM, STYLE_FEATURES, style_features, with_style
from curp_chain.model.user_model import CurpUserModel


def feature(text: str, name: str) -> float:
    return style_features(text)[STYLE_FEATURES.index(name)]


def test_every_feature_is_bounded() -> None:
    texts = ["", "@a @b @c @d !!!!!! #x #y #z #w", "A" * 500, "lol 😂 :) sooo", "x, y, z, w"]
    for text in texts:
        values = style_features(text)
        assert len(values) == STYLE_DIM
        assert all(0.0 <= v <= 1.0 for v in values), text


@pytest.mark.parametrize(
    ("text", "name", "expected"),
    [
        ("@Bob i dont know...", "first letter lowercase", 1.0),
        ("@bob I don't know.", "first letter lowercase", 0.0),
        ("@Bob i dont know...", "no uppercase letter", 1.0),
        ("@Bob i dont know...", "contraction without apostrophe", 1.0),
        ("@Bob i dont know...", "ellipsis", 1.0),
        ("@Bob i dont know...", "ends with .", 0.0),
        ("I don't know.", "ends with .", 1.0),
        ("I don't know.", "contraction with apostrophe", 1.0),
        ("what a day!!", "repeated ! or ?", 1.0),
        ("so tired 😂", "emoji", 1.0),
        ("see you :)", "emoticon or <3", 1.0),
        ("haha that was great", "laughter (lol, haha, ...)", 1.0),
        ("THIS IS GREAT", "all-caps word share", 1.0),
        ("@bob yes", "starts with @mention", 1.0),
        ("yes @bob", "starts with @mention", 0.0),
    ],
)
def test_features_read_the_writing(text: str, name: str, expected: float) -> None:
    assert feature(text, name) == expected


def test_with_style_appends_features_only_when_the_model_uses_them() -> None:
    texts = ["hello there", "HELLO THERE!"]
    vectors = torch.randn(2, 8)
    assert with_style(vectors, texts, 0) is vectors
    styled = with_style(vectors, texts, STYLE_DIM)
    assert styled.shape == (2, 8 + STYLE_DIM)
    assert torch.equal(styled[:, :8], vectors)
    assert not torch.equal(styled[0, 8:], styled[1, 8:])
    with pytest.raises(ValueError, match="2 texts for 3 vectors"):
        with_style(torch.randn(3, 8), texts, STYLE_DIM)


def test_style_features_are_a_codebook_subspace_of_their_own() -> None:
    config = CurpConfig(style_dim=STYLE_DIM, num_subspaces=17)
    assert config.item_dim == 384 + STYLE_DIM and config.subspace_dim == STYLE_DIM
    assert config.item_encoder_id.endswith("+style-v1")
    with pytest.raises(ValueError, match="num_subspaces=17"):
        CurpConfig(style_dim=STYLE_DIM, num_subspaces=12)
    with pytest.raises(ValueError, match="style_dim=5"):
        CurpConfig(style_dim=5, num_subspaces=1)


def test_a_styled_model_quantizes_style_into_the_last_code() -> None:
    torch.manual_seed(0)
    model = CurpUserModel(CurpConfig(style_dim=STYLE_DIM, num_subspaces=17)).eval()
    texts = ["I am fine.", "i am fine"]
    same_meaning = torch.nn.functional.normalize(torch.ones(1, 384), dim=-1).expand(2, -1)
    codes = model.quantizer.encode(model.item_vectors(same_meaning, texts))
    assert codes.shape == (2, 17)
    assert torch.equal(codes[0, :16], codes[1, :16])  # same encoder vector, same 16 codes
    style = model.item_vectors(same_meaning, texts)[:, 384:]
    nearest = torch.cdist(style, model.quantizer.prototypes[16]).argmin(-1)
    assert torch.equal(codes[:, 16], nearest)  # the last code is the style prototype
