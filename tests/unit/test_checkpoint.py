"""Checkpoint folders: safetensors + JSON, and clear refusals of foreign or broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from curp_chain.errors import CheckpointError, IncompatibleCheckpointError
from curp_chain.model.checkpoint import (
    DEFAULT_CHECKPOINT,
    LAMP7_CHECKPOINT,
    check_compatible,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from curp_chain.model.config import CurpConfig
from curp_chain.training.initialize import initial_model


def test_roundtrip_keeps_weights_and_config(tmp_path: Path) -> None:
    config = CurpConfig(num_subspaces=4, codebook_size=16, provenance={"steps": 3})
    model = initial_model(config, seed=5)
    save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == config
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert not loaded.training


def test_initialisation_is_reproducible() -> None:
    a, b = initial_model(CurpConfig(), seed=1), initial_model(CurpConfig(), seed=1)
    assert torch.equal(a.quantizer.prototypes, b.quantizer.prototypes)
    assert not torch.equal(
        a.quantizer.prototypes, initial_model(CurpConfig(), 2).quantizer.prototypes
    )


def test_bundled_checkpoint_loads_and_says_whether_it_is_trained() -> None:
    model = load_checkpoint()
    config = read_config(DEFAULT_CHECKPOINT)
    assert model.config == config
    assert config.llm_hidden_size == 576 and config.encoder_dim == 384
    if not config.trained:
        assert "untrained" in json.dumps(config.provenance)
    else:
        assert config.provenance.get("command")


def test_the_default_mix_checkpoint_shares_the_lamp7_codebook_and_differs_in_its_projector() -> (
    None
):
    mix, lamp7 = load_checkpoint(), load_checkpoint(LAMP7_CHECKPOINT)
    encoder = mix.config.item_encoder_id
    # Codes stored under either serve the other as they are.
    assert mix.quantizer.version(encoder) == lamp7.quantizer.version(encoder)
    assert not torch.equal(mix.projector.base, lamp7.projector.base)
    assert mix.config.trained and "--examples" in mix.config.provenance["command"]
    # Only the mix names a system message for personalized chat (curp_chain.chat.system_message).
    assert mix.config.chat_system_message and lamp7.config.chat_system_message is None


def test_trainable_parameters_are_a_small_fraction_of_the_llm() -> None:
    count = load_checkpoint().num_trainable_parameters()
    assert 0.001 < count / 134_515_008 < 0.005  # SmolLM2-135M has 134.5M parameters


def test_incompatible_llm_is_refused_with_every_mismatch_named() -> None:
    config = CurpConfig()
    with pytest.raises(IncompatibleCheckpointError) as error:
        check_compatible(config, llm_id="Qwen/Qwen2.5-0.5B-Instruct", llm_hidden_size=896)
    message = str(error.value)
    assert "896" in message and "576" in message and "Qwen" in message
    check_compatible(config, llm_id=config.llm_id, llm_hidden_size=576)  # no error


def test_missing_or_broken_checkpoints_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid curp-chain config"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(CurpConfig().model_dump_json())
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path)


def test_weights_that_do_not_match_the_config_are_refused(tmp_path: Path) -> None:
    save_checkpoint(initial_model(CurpConfig(codebook_size=16)), tmp_path)
    (tmp_path / "config.json").write_text(CurpConfig(codebook_size=32).model_dump_json())
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(tmp_path)
