"""The prefix cache on the real SmolLM2 (llama.cpp at one thread, and transformers), greedy.

Every reply with a warm cache is compared with the same request's reply with a cold one
(the cache emptied just before it), and the cache's counters show that it was used.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch

from curp_chain import CurpChatModel
from curp_chain.interfaces.protocols import GenerationParams, SoftPrompt
from curp_chain.runtime.prompt import ChatTurn, build_soft_prompt
from curp_chain_integrations.backends.hf import TransformersBackend
from curp_chain_integrations.backends.llamacpp import LlamaCppBackend
from curp_chain_stores import SQLHistoryStore

Backend = LlamaCppBackend | TransformersBackend
GREEDY = GenerationParams(max_tokens=12)
KINDS = ["orders", "invoices", "parcels", "refunds", "customers"]


def system_message(kinds: list[str]) -> str:
    """A system message listing one lookup tool per kind, as tool calling writes it."""
    lines = ["You can call these tools:"]
    for kind in kinds:
        lines.append(f"lookup_{kind}(id: integer): Look up {kind} by id.")
    lines.append('To call a tool, reply with only a JSON object: {"name": ..., "arguments": ...}.')
    return "\n".join(lines)


SYSTEM = system_message(KINDS)


def user_soft(seed: int) -> np.ndarray:
    """A user's soft tokens (five, in SmolLM2's input-embedding scale)."""
    return (np.random.default_rng(seed).standard_normal((5, 576)) * 0.13).astype(np.float32)


def prompt(backend: Backend, user: int, question: str, system: str = SYSTEM) -> SoftPrompt:
    turns = [ChatTurn("system", system), ChatTurn("user", question)]
    return build_soft_prompt(backend.chat_template, turns, user_soft(user), backend.special_tokens)


def reply(backend: Backend, request: SoftPrompt) -> str:
    return "".join(chunk.text for chunk in backend.stream(request, GREEDY))


def cold_reply(backend: Backend, request: SoftPrompt) -> str:
    """The reply with an empty prefix cache."""
    backend.prefix_cache.clear()
    return reply(backend, request)


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaCppBackend]:
    # Two single-threaded workers with two slots each: the cache is shared between them.
    backend = LlamaCppBackend(n_ctx=2048, n_threads=1, slots=4, workers=2, prefix_cache_size=2)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def hf() -> TransformersBackend:
    return TransformersBackend(slots=4, prefix_cache_size=2)


@pytest.fixture(params=["llama", "hf"])
def backend(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.getfixturevalue(request.param)
    chosen.prefix_cache.clear()
    return chosen


@pytest.mark.slow
def test_a_warm_prefix_gives_the_cold_reply_and_decodes_fewer_prompt_tokens(
    backend: Backend,
) -> None:
    request = prompt(backend, user=1, question="Where is my parcel 42?")
    prefix = backend.tokenize(request.before)
    cold = cold_reply(backend, request)
    first = backend.prefix_cache.stats
    assert (first.misses, first.hits, first.entries) == (1, 0, 1)
    warm = reply(backend, request)
    second = backend.prefix_cache.stats
    assert warm == cold and cold
    assert second.hits == 1
    assert second.tokens_reused == len(prefix) >= backend.prefix_cache.min_tokens
    # The second call decoded only the soft tokens and the text after them.
    assert second.tokens_decoded - first.tokens_decoded == first.tokens_decoded - len(prefix)
    assert second.nbytes > 0


@pytest.mark.slow
def test_two_users_share_the_prefix_and_each_gets_the_reply_of_their_own_soft_tokens(
    backend: Backend,
) -> None:
    question = "Can you check my last order?"
    alice, bob = prompt(backend, 1, question), prompt(backend, 2, question)
    assert alice.before == bob.before
    cold = {"alice": cold_reply(backend, alice), "bob": cold_reply(backend, bob)}
    assert cold["alice"] != cold["bob"]  # the soft tokens reach the reply
    backend.prefix_cache.clear()
    warm = {"alice": reply(backend, alice), "bob": reply(backend, bob)}
    assert warm == cold
    stats = backend.prefix_cache.stats
    assert (stats.misses, stats.hits, stats.entries) == (1, 1, 1)  # bob used alice's prefix
    # Only the text before the soft tokens is cached: neither user's question nor reply.
    assert backend.tokenize(alice.before) in backend.prefix_cache
    assert backend.tokenize(alice.before + question) not in backend.prefix_cache


@pytest.mark.slow
def test_concurrent_requests_through_the_scheduler_get_their_cold_replies(
    backend: Backend,
) -> None:
    questions = ["Where is my parcel 42?", "Refund order 7, please."]
    requests = [prompt(backend, user, q) for user in (1, 2) for q in questions]
    cold = [cold_reply(backend, r) for r in requests]

    def all_at_once() -> list[str]:
        streams = [backend.submit(r, GREEDY) for r in requests]  # queued together
        with ThreadPoolExecutor(max_workers=len(streams)) as pool:
            replies = pool.map(lambda s: "".join(c.text for c in s), streams)
            return list(replies)

    backend.prefix_cache.clear()
    assert all_at_once() == cold  # starting cold: the first request of each worker decodes
    assert backend.prefix_cache.stats.hits >= 1
    hits = backend.prefix_cache.stats.hits
    assert all_at_once() == cold  # warm: every request restores the prefix
    assert backend.prefix_cache.stats.hits == hits + len(requests)


@pytest.mark.slow
def test_an_evicted_prefix_is_decoded_again_with_the_same_reply(backend: Backend) -> None:
    question = "Look up invoice 3."
    systems = [system_message(KINDS[:n]) for n in (3, 4, 5)]  # three prefixes, two slots
    requests = [prompt(backend, 1, question, system) for system in systems]
    cold = [cold_reply(backend, r) for r in requests]
    backend.prefix_cache.clear()
    assert [reply(backend, r) for r in requests] == cold  # the third evicts the first
    stats = backend.prefix_cache.stats
    assert (stats.misses, stats.evictions, stats.entries) == (3, 1, 2)
    assert backend.tokenize(requests[0].before) not in backend.prefix_cache
    assert reply(backend, requests[0]) == cold[0]  # decoded again, evicting the second
    assert reply(backend, requests[2]) == cold[2]  # still cached
    stats = backend.prefix_cache.stats
    assert (stats.misses, stats.hits, stats.evictions) == (4, 1, 2)


@pytest.mark.slow
def test_a_prefix_one_token_different_misses_the_cache(backend: Backend) -> None:
    question = "Find refund 12."
    first = prompt(backend, 1, question)
    other = prompt(backend, 1, question, SYSTEM.replace("Look up orders", "Look up Orders"))
    a, b = backend.tokenize(first.before), backend.tokenize(other.before)
    assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) == 1
    cold_other = cold_reply(backend, other)
    backend.prefix_cache.clear()
    reply(backend, first)
    assert reply(backend, other) == cold_other
    stats = backend.prefix_cache.stats
    assert (stats.hits, stats.misses, stats.entries) == (0, 2, 2)


@pytest.mark.slow
def test_a_backend_without_the_cache_gives_the_same_replies(llama: LlamaCppBackend) -> None:
    off = LlamaCppBackend(n_ctx=2048, n_threads=1, slots=1, prefix_cache_size=0)
    try:
        request = prompt(off, 2, "Where is my parcel 42?")
        assert reply(off, request) == reply(off, request) == cold_reply(llama, request)
        stats = off.prefix_cache.stats
        assert (stats.hits, stats.entries, stats.tokens_reused) == (0, 0, 0)
    finally:
        off.close()


@pytest.mark.slow
def test_an_agent_call_of_a_second_user_reuses_the_system_message_and_tools(
    llama: LlamaCppBackend, memory_store: SQLHistoryStore
) -> None:
    model = CurpChatModel(backend=llama, history_store=memory_store, max_tokens=32)
    model.add_history("runner", ["Sunrise trail run: 18 km.", "Marathon week 12."])
    model.add_history("reader", ["Finished a castle puzzle.", "Rainy Sunday, fantasy novel."])
    tools: list[dict[str, Any]] = [
        {
            "type": "function",
            "function": {
                "name": f"lookup_{kind}",
                "description": f"Look up {kind} by id.",
                "parameters": {
                    "type": "object",
                    "properties": {"id": {"type": "integer"}},
                    "required": ["id"],
                },
            },
        }
        for kind in KINDS
    ]
    bound = model.bind_tools(tools, tool_choice="any")
    question = "Where is order 42?"
    llama.prefix_cache.clear()
    cold = bound.invoke(question, user_id="reader")
    llama.prefix_cache.clear()
    bound.invoke(question, user_id="runner")
    warm = bound.invoke(question, user_id="reader")
    calls = [[(c["name"], c["args"]) for c in m.tool_calls] for m in (cold, warm)]
    assert calls[0] == calls[1] and calls[0]  # call ids are drawn at random
    stats = llama.prefix_cache.stats
    assert (stats.misses, stats.hits) == (1, 1)
    assert warm.response_metadata["curp"]["soft_tokens"] > 0  # personalized, yet shared


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_vllm_caches_prefixes_where_its_cache_keys_prompt_embeddings(
    hf: TransformersBackend,
) -> None:
    from curp_chain_integrations.backends.gguf import smollm2_gguf_path
    from curp_chain_integrations.backends.hf import _cache_dir
    from curp_chain_integrations.backends.vllm import VLLMBackend, embeddings_keyed_prefix_cache

    folder = _cache_dir(smollm2_gguf_path())  # written by the transformers backend
    backend = VLLMBackend(folder, gpu_memory_utilization=0.3, max_model_len=2048)
    try:
        assert backend.prefix_caching == embeddings_keyed_prefix_cache()
        request = prompt(hf, 1, "Where is my parcel 42?")
        first = "".join(c.text for c in backend.stream(request, GREEDY))
        assert first and "".join(c.text for c in backend.stream(request, GREEDY)) == first
    finally:
        backend.close()
