"""The llama.cpp and transformers backends on the real bundled SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest

from curp_chain.errors import BackendError, ContextLengthError
from curp_chain.interfaces.protocols import GenerationParams, SoftPrompt
from curp_chain.runtime.prompt import ChatTurn, build_soft_prompt

GREEDY = GenerationParams(max_tokens=24)


def soft_prompt(backend, text: str, soft: np.ndarray | None) -> SoftPrompt:
    return build_soft_prompt(
        backend.chat_template, [ChatTurn("user", text)], soft, backend.special_tokens
    )


def reply(backend, prompt: SoftPrompt, params: GenerationParams = GREEDY) -> str:
    return "".join(chunk.text for chunk in backend.stream(prompt, params))


def random_soft(seed: int, n: int = 5) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, 576)) * 0.13).astype(np.float32)


def prefill_logits(backend, segments) -> np.ndarray:
    # Straight on a worker's native context, in sequence 0: no request runs meanwhile.
    lane = backend._lanes[-1]
    lane.prefill(0, segments)
    logits = lane.logits()
    lane.clear(0)
    return logits


def test_token_embeddings_fed_as_soft_tokens_reproduce_the_token_path(
    llama_backend, hf_backend
) -> None:
    ids = llama_backend.tokenize("<|im_start|>user\nName three colours.<|im_end|>\n")
    head, middle, tail = (
        ids[:3],
        ids[3:9],
        ids[9:] + llama_backend.tokenize("<|im_start|>assistant\n"),
    )
    rows = hf_backend.embed_tokens(middle).detach().numpy()
    as_tokens = prefill_logits(
        llama_backend, [("tokens", head), ("tokens", middle), ("tokens", tail)]
    )
    as_embeddings = prefill_logits(
        llama_backend, [("tokens", head), ("embd", rows), ("tokens", tail)]
    )
    assert np.abs(as_tokens - as_embeddings).max() < 1e-2
    shifted = prefill_logits(
        llama_backend, [("tokens", head), ("embd", random_soft(0, 6)), ("tokens", tail)]
    )
    assert np.abs(as_tokens - shifted).max() > 1.0  # the embeddings are really used


def test_soft_tokens_change_the_reply(llama_backend) -> None:
    question = "Describe your ideal weekend in one sentence."
    plain = reply(llama_backend, soft_prompt(llama_backend, question, None))
    replies = {
        reply(llama_backend, soft_prompt(llama_backend, question, random_soft(s))) for s in range(3)
    }
    assert plain and all(replies)
    assert len(replies | {plain}) > 1


def test_no_state_leaks_between_requests(llama_backend) -> None:
    question = "What should I cook tonight?"
    first = reply(llama_backend, soft_prompt(llama_backend, question, random_soft(1)))
    other = reply(llama_backend, soft_prompt(llama_backend, question, random_soft(2)))
    again = reply(llama_backend, soft_prompt(llama_backend, question, random_soft(1)))
    assert first == again
    assert first != other


def test_max_tokens_and_stop_sequences_are_honoured(llama_backend) -> None:
    prompt = soft_prompt(llama_backend, "Count from one to twenty in words, comma separated.", None)
    chunks = list(llama_backend.stream(prompt, GenerationParams(max_tokens=5)))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage["output_tokens"] == 5
    full = reply(llama_backend, prompt, GenerationParams(max_tokens=40))
    stop = full.split()[2]
    cut = list(llama_backend.stream(prompt, GenerationParams(max_tokens=40, stop=(stop,))))
    text = "".join(c.text for c in cut)
    assert stop not in text and full.startswith(text)
    assert cut[-1].finish_reason == "stop"


def test_usage_counts_text_and_soft_tokens(llama_backend) -> None:
    prompt = soft_prompt(llama_backend, "Hello!", random_soft(3, 4))
    last = list(llama_backend.stream(prompt, GenerationParams(max_tokens=8)))[-1]
    expected = (
        llama_backend.count_tokens(prompt.before) + 4 + llama_backend.count_tokens(prompt.after)
    )
    assert last.usage == {
        "input_tokens": expected,
        "output_tokens": last.usage["output_tokens"],
        "soft_tokens": 4,
    }
    assert 0 < last.usage["output_tokens"] <= 8


def test_a_prompt_longer_than_the_context_names_the_limit(llama_backend) -> None:
    prompt = soft_prompt(llama_backend, "word " * 3000, random_soft(4))
    with pytest.raises(ContextLengthError, match="context window is 2048"):
        reply(llama_backend, prompt)


def test_a_failed_native_decode_raises_a_backend_error_with_its_return_code() -> None:
    from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(n_ctx=256, n_threads=1, slots=1, n_batch=64)
    try:
        lane = backend._lanes[0]
        tokens = backend.tokenize("hello world " * 200)[:300]  # more than the sequence holds
        with pytest.raises(BackendError, match="llama_decode failed with return code 1"):
            lane.prefill(0, [("tokens", tokens)])
        lane.clear(0)
        with pytest.raises(BackendError, match="returned no logits"):
            lane.logits(9999)  # no such position in the last decode
    finally:
        backend.close()


def test_soft_tokens_of_the_wrong_width_are_refused(llama_backend, hf_backend) -> None:
    bad = np.zeros((2, 100), np.float32)
    for backend in (llama_backend, hf_backend):
        with pytest.raises(BackendError, match=r"\(n, 576\)"):
            reply(backend, soft_prompt(backend, "hi", bad))


def test_transformers_and_llamacpp_agree_on_the_same_soft_prompt(llama_backend, hf_backend) -> None:
    prompt = soft_prompt(llama_backend, "Give me one tip for better sleep.", random_soft(5))
    params = GenerationParams(max_tokens=6)
    ours = list(llama_backend.stream(prompt, params))
    theirs = list(hf_backend.stream(prompt, params))
    assert hf_backend.chat_template == llama_backend.chat_template
    assert ours[-1].usage["input_tokens"] == theirs[-1].usage["input_tokens"]
    # Quantized matmuls differ slightly; the first words of a greedy reply agree.
    first_words = lambda chunks: "".join(c.text for c in chunks).split()[:2]  # noqa: E731
    assert first_words(ours) == first_words(theirs)


def test_logprobs_follow_every_generated_token(llama_backend, hf_backend) -> None:
    prompt = soft_prompt(llama_backend, "Name a fruit.", random_soft(6))
    params = GenerationParams(max_tokens=8, logprobs=True, top_logprobs=3, no_repeat_ngram_size=0)
    first: list[float] = []
    for backend in (llama_backend, hf_backend):
        chunks = list(backend.stream(prompt, params))
        entries = [entry for chunk in chunks for entry in chunk.logprobs]
        assert len(entries) == chunks[-1].usage["output_tokens"]
        for entry in entries:  # greedy: every chosen token is the likeliest one
            assert len(entry.top) == 3 and entry.top[0] == (entry.token, entry.logprob)
            assert entry.top[0][1] >= entry.top[1][1] >= entry.top[2][1]
            assert entry.logprob <= 0.0
        first.append(entries[0].logprob)
    assert abs(first[0] - first[1]) < 0.1  # quantized and float matmuls score alike


def test_a_reply_never_echoes_a_no_echo_passage(llama_backend, hf_backend) -> None:
    prompt = soft_prompt(llama_backend, "Name three fruits.", random_soft(6))
    free = GenerationParams(max_tokens=16)
    for backend in (llama_backend, hf_backend):
        reply = "".join(chunk.text for chunk in backend.stream(prompt, free))
        guarded = replace(free, no_echo=(reply,))  # the reply it gives when free
        echoing = "".join(chunk.text for chunk in backend.stream(prompt, guarded))
        ids, passage = backend.tokenize(echoing), backend.tokenize(reply)
        assert echoing.strip() and echoing != reply
        assert not set(pairwise(ids)) & set(pairwise(passage))


COLOUR = {
    "type": "object",
    "properties": {"colour": {"enum": ["red", "green", "blue"]}},
    "required": ["colour"],
}


def test_a_json_schema_constrains_the_reply(llama_backend, hf_backend) -> None:
    prompt = soft_prompt(llama_backend, "Tell me about the sea.", random_soft(7))
    for backend in (llama_backend, hf_backend):  # llama.cpp's grammars; llguidance on HF
        chunks = list(backend.stream(prompt, GenerationParams(max_tokens=32, json_schema=COLOUR)))
        assert chunks[-1].finish_reason == "stop"
        assert json.loads("".join(c.text for c in chunks))["colour"] in ("red", "green", "blue")
