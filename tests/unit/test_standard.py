"""LangChain's standard unit-test suite for chat models."""

from __future__ import annotations

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.unit_tests import ChatModelUnitTests
from syrupy.assertion import SnapshotAssertion

from curp_chain import CurpChatModel


class TestCurpChatModelStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[CurpChatModel]:
        return CurpChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}

    @pytest.mark.xfail(
        reason="langchain-core's load(allowed_objects='all') admits only the classes in its own "
        "mapping, which lists no third-party package; the dumpd/loads round trip is tested in "
        "tests/integration/test_serialization.py with allowed_objects=[CurpChatModel]",
        raises=ValueError,
        strict=True,
    )
    def test_serdes(self, model: BaseChatModel, snapshot: SnapshotAssertion) -> None:
        # Fails for real if dumpd stops matching the snapshot (an AssertionError, not the
        # expected ValueError) or if load() starts accepting the class (a strict XPASS).
        super().test_serdes(model, snapshot)
