"""Shared fixtures: the real bundled models, loaded once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # for annotations only: each fixture imports its class when first used
    from curp_chain.model.encoder import SentenceEncoder
    from curp_chain_integrations.backends.hf import TransformersBackend
    from curp_chain_integrations.backends.llamacpp import LlamaCppBackend
    from curp_chain_stores import SQLHistoryStore

# Tests never touch a user's real data directory or a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def seeded_torch() -> None:
    """Every test starts from the same random state, whichever tests ran before it (a
    benchmark runs a timing-dependent number of rounds)."""
    import torch

    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def curp_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("curp-home")
    previous = os.environ.get("CURP_HOME")
    os.environ["CURP_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("CURP_HOME", None)
    else:
        os.environ["CURP_HOME"] = previous


@pytest.fixture(scope="session")
def llama_backend() -> LlamaCppBackend:
    from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend(n_ctx=2048)


@pytest.fixture(scope="session")
def hf_backend() -> TransformersBackend:
    from curp_chain_integrations.backends.hf import TransformersBackend

    return TransformersBackend()


@pytest.fixture(scope="session")
def encoder() -> SentenceEncoder:
    from curp_chain.model.encoder import SentenceEncoder

    return SentenceEncoder()


@pytest.fixture
def memory_store() -> Iterator[SQLHistoryStore]:
    from curp_chain_stores import SQLHistoryStore

    store = SQLHistoryStore("sqlite://")
    store.setup()
    yield store
    store.close()
