"""Serialization (dumpd / loads rebuild the model from its parameters) and token counting
through the backend's own tokenizer."""

from __future__ import annotations

import json

from langchain_core.load import dumpd, dumps, loads

from curp_chain import CurpChatModel


def test_dumpd_and_loads_rebuild_the_model_from_its_parameters(tmp_path) -> None:
    model = CurpChatModel(
        store_url=f"sqlite:///{tmp_path / 'h.db'}", max_tokens=32, temperature=0.5, top_p=0.9
    )
    assert CurpChatModel.is_lc_serializable()
    data = dumpd(model)
    assert data["id"] == ["curp_chain", "CurpChatModel"]
    assert data["kwargs"]["max_tokens"] == 32
    restored = loads(dumps(model), allowed_objects=[CurpChatModel], valid_namespaces=["curp_chain"])
    assert isinstance(restored, CurpChatModel)
    for field in ("store_url", "max_tokens", "temperature", "top_p", "backend_kind"):
        assert getattr(restored, field) == getattr(model, field)


def test_an_injected_backend_or_store_is_left_out(llama_backend, memory_store) -> None:
    model = CurpChatModel(backend=llama_backend, history_store=memory_store, max_tokens=16)
    text = dumps(model)
    assert "backend" not in json.loads(text)["kwargs"]
    assert "history_store" not in json.loads(text)["kwargs"]
    restored = loads(text, allowed_objects=[CurpChatModel], valid_namespaces=["curp_chain"])
    assert restored.backend is None and restored.max_tokens == 16


def test_get_num_tokens_uses_the_backend_tokenizer(llama_backend, memory_store) -> None:
    model = CurpChatModel(backend=llama_backend, history_store=memory_store)
    text = "Sunrise trail run: 18 km and 900 m of climbing."
    assert model.get_num_tokens(text) == llama_backend.count_tokens(text) > 5
    assert model.get_token_ids(text) == llama_backend.tokenize(text)
