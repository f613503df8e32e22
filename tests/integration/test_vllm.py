"""The vLLM backend (continuous batching, tool calls and structured output through vLLM's
structured outputs): runs only where vLLM and a CUDA GPU are present, and says so otherwise."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
import torch

from curp_chain import CurpChatModel

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (GPU only)"
    ),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]


@pytest.fixture(scope="module")
def vllm_backend(hf_backend):
    from curp_chain_integrations.backends.gguf import smollm2_gguf_path
    from curp_chain_integrations.backends.hf import _cache_dir
    from curp_chain_integrations.backends.vllm import VLLMBackend

    folder = _cache_dir(smollm2_gguf_path())  # written by the transformers backend
    backend = VLLMBackend(folder, gpu_memory_utilization=0.3, max_model_len=2048)
    yield backend
    backend.close()


async def test_personalized_replies_stream_for_many_users_at_once(
    vllm_backend, memory_store
) -> None:
    model = CurpChatModel(backend=vllm_backend, history_store=memory_store, max_tokens=16)
    model.add_history("runner", ["Sunrise trail run: 18 km.", "Marathon week 12."])
    model.add_history("reader", ["Finished a castle puzzle.", "Rainy Sunday, fantasy novel."])
    users = ["runner", "reader", "nobody"] * 6
    replies = await asyncio.wait_for(
        asyncio.gather(*(model.ainvoke("Plans for Saturday?", user_id=u) for u in users)), 300
    )
    assert all(r.content for r in replies)
    # vLLM does not promise batch-invariant arithmetic, so replies are not compared with
    # the same request served alone (the llama.cpp backend's isolation test does that).
    assert replies[0].response_metadata["curp"]["soft_tokens"] > 0
    assert replies[2].response_metadata["curp"]["personalized"] is False


def test_tool_calls_and_structured_output_decode_under_vllm_structured_outputs(
    vllm_backend, memory_store
) -> None:
    from pydantic import BaseModel

    class Plan(BaseModel):
        activity: str
        hours: int

    def add_numbers(a: int, b: int) -> int:
        """Add two integers and return the sum."""
        return a + b

    model = CurpChatModel(backend=vllm_backend, history_store=memory_store, max_tokens=48)
    for choice in ("any", "add_numbers"):
        call = model.bind_tools([add_numbers], tool_choice=choice).invoke("What is 17 plus 25?")
        assert [c["name"] for c in call.tool_calls] == ["add_numbers"]
        assert all(isinstance(call.tool_calls[0]["args"][k], int) for k in ("a", "b"))
    text = model.bind_tools([add_numbers], tool_choice="none").invoke("What is 17 plus 25?")
    assert isinstance(text.content, str) and text.content and not text.content.startswith("{")
    plan = model.with_structured_output(Plan).invoke("Plan my Saturday.", max_tokens=64)
    assert isinstance(plan, Plan)
    assert isinstance(model.with_structured_output(method="json_mode").invoke("Hi"), dict)
