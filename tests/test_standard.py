"""LangChain's standard unit-test suite for chat models."""

from __future__ import annotations

from langchain_tests.unit_tests import ChatModelUnitTests

from curp_chain import CurpChatModel


class TestCurpChatModelStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[CurpChatModel]:
        return CurpChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}
