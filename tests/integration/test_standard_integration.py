"""LangChain's standard integration suite for chat models, on the default local model
(SmolLM2-135M-Instruct, greedy, 64 tokens) through llama.cpp, then through transformers
(tool calls and structured output decoded under llguidance grammars there). Skips and
expected failures are listed, with their reasons, in the README (Standard test suites)."""

from __future__ import annotations

import functools
from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests

from curp_chain import CurpChatModel


@functools.cache
def one_thread_backend() -> Any:
    """The default model (SmolLM2-135M-Instruct through llama.cpp) on one thread: CI
    machines run other work, and llama.cpp threads beyond the free cores spin-wait."""
    from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend(n_threads=1)


@functools.cache
def transformers_backend() -> Any:
    """The same model through transformers (float32 weights dequantized from the GGUF)."""
    from curp_chain_integrations.backends.hf import TransformersBackend

    return TransformersBackend()


class TestCurpChatModelIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[CurpChatModel]:
        return CurpChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"max_tokens": 64, "temperature": 0, "backend": one_thread_backend()}

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


class TestCurpChatModelTransformersIntegration(TestCurpChatModelIntegration):
    """The same suite on the transformers backend."""

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"max_tokens": 64, "temperature": 0, "backend": transformers_backend()}
