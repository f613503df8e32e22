"""LangChain's standard integration suite for chat models, on the default local model
(SmolLM2-135M-Instruct through llama.cpp, greedy, 64 tokens). Skips and expected failures
are listed, with their reasons, in the README (Standard test suites)."""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests

from curp_chain import CurpChatModel


class TestCurpChatModelIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[CurpChatModel]:
        return CurpChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"max_tokens": 64, "temperature": 0}

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        # "model" names the reply in metadata; it does not switch weights.
        return False
