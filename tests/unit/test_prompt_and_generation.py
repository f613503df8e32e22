"""The shared prompt builder and the backend-neutral decoding helpers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curp_chain.chat.structured import with_format_instruction
from curp_chain.errors import CurpError, InvalidGenerationParamsError
from curp_chain.interfaces.protocols import GenerationChunk, GenerationParams
from curp_chain.runtime.generation import (
    Feed,
    TokenSampler,
    banned_by_echo,
    banned_by_ngrams,
    decode_steps,
    find_stop,
    token_logprob,
)
from curp_chain.runtime.prompt import SOFT_MARKER, ChatTurn, build_soft_prompt, render_chat

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = {"bos_token": "", "eos_token": "<|im_end|>"}
SOFT = np.zeros((3, 4), np.float32)


def test_soft_tokens_go_before_the_last_user_message() -> None:
    turns = [
        ChatTurn("system", "Be brief."),
        ChatTurn("user", "first"),
        ChatTurn("assistant", "ok"),
        ChatTurn("user", "second"),
    ]
    prompt = build_soft_prompt(CHATML, turns, SOFT, SPECIAL)
    assert prompt.before.endswith("<|im_start|>user\n")
    assert "first" in prompt.before and "second" not in prompt.before
    assert prompt.after == "\nsecond<|im_end|>\n<|im_start|>assistant\n"
    assert prompt.before + prompt.after == render_chat(
        CHATML, [*turns[:3], ChatTurn("user", "\nsecond")], SPECIAL
    )


def test_without_soft_tokens_the_prompt_is_the_plain_template() -> None:
    turns = [ChatTurn("user", "hi")]
    prompt = build_soft_prompt(CHATML, turns, None, SPECIAL)
    assert prompt.soft is None and prompt.after == ""
    assert prompt.before == render_chat(CHATML, turns, SPECIAL)


def test_a_soft_prompt_needs_a_user_message() -> None:
    with pytest.raises(CurpError, match="user"):
        build_soft_prompt(CHATML, [ChatTurn("system", "x")], SOFT, SPECIAL)


@given(st.text(max_size=200))
def test_user_text_can_never_move_the_soft_tokens(text: str) -> None:
    prompt = build_soft_prompt(
        CHATML, [ChatTurn("user", SOFT_MARKER + text + SOFT_MARKER)], SOFT, SPECIAL
    )
    assert SOFT_MARKER not in prompt.before + prompt.after
    assert prompt.after.endswith("<|im_start|>assistant\n")  # soft tokens never come last
    assert prompt.before.endswith("<|im_start|>user\n")


def test_ngram_blocking_bans_only_repeats_of_generated_ngrams() -> None:
    assert banned_by_ngrams([1, 2, 3, 1, 2], 3) == {3}
    assert banned_by_ngrams([1, 2, 3, 4], 3) == set()
    assert banned_by_ngrams([5, 5, 5], 2) == {5}
    assert banned_by_ngrams([1, 2], 0) == set()


def test_echo_blocking_bans_every_bigram_of_the_passages() -> None:
    line = [7, 8, 9, 10]
    assert banned_by_echo([4, 7], [line]) == {8}  # anywhere in the reply
    assert banned_by_echo([10], [line]) == set()  # 10 ends the line
    assert banned_by_echo([8], [[5, 8, 3], line]) == {3, 9}
    assert banned_by_echo([], [line]) == set()  # a passage's first word may open the reply
    assert banned_by_echo([7, 8], []) == set()


def test_the_sampler_turns_away_from_a_passage_it_must_not_echo() -> None:
    logits = np.array([0.0, 1.0, 5.0, 0.0], np.float32)  # 2 would continue the line
    params = GenerationParams(no_repeat_ngram_size=0, no_echo=("the line",))
    assert TokenSampler(params, [[0, 1, 2]]).choose(logits, [3, 1]) == 1
    assert TokenSampler(params).choose(logits, [3, 1]) == 2


@given(
    st.text(alphabet="abc", max_size=30),
    st.lists(st.text(alphabet="abc", min_size=1, max_size=4), max_size=3),
)
def test_find_stop_finds_the_earliest_stop_and_holds_partial_ones(
    text: str, stops: list[str]
) -> None:
    at, hold = find_stop(text, stops)
    present = [text.find(s) for s in stops if s in text]
    assert at == (min(present) if present else -1)
    assert 0 <= hold < max((len(s) for s in stops), default=1)
    if hold:
        assert any(text.endswith(s[:hold]) for s in stops)


def test_token_logprob_is_the_log_softmax_with_the_likeliest_tokens_first() -> None:
    logits = np.array([0.5, 3.0, -1.0, 2.0, 3.0], np.float32)
    expected = logits - np.log(np.exp(logits.astype(np.float64)).sum())
    entry = token_logprob(logits, 3, 3, lambda ids: f"<{ids[0]}>")
    assert entry.token == "<3>" and entry.logprob == pytest.approx(expected[3])
    assert [t for t, _ in entry.top] == ["<1>", "<4>", "<3>"]  # ties keep the lower id first
    assert [lp for _, lp in entry.top] == pytest.approx(expected[[1, 4, 3]])
    assert token_logprob(logits, 0, 0, str).top == ()
    assert len(token_logprob(logits, 0, 99, str).top) == 5


def test_no_echo_takes_passages_not_one_string() -> None:
    with pytest.raises(InvalidGenerationParamsError, match="tuple of passages"):
        GenerationParams(no_echo="Some things I wrote about")  # type: ignore[arg-type]


def test_top_logprobs_need_logprobs() -> None:
    with pytest.raises(InvalidGenerationParamsError, match="logprobs=True"):
        GenerationParams(top_logprobs=2)
    with pytest.raises(InvalidGenerationParamsError, match="0 or more"):
        GenerationParams(logprobs=True, top_logprobs=-1)


def test_when_a_grammar_allows_only_a_repeat_the_repeat_is_taken() -> None:
    logits = np.full(5, -np.inf, np.float32)
    logits[3] = 0.0  # the only token a grammar allows
    generated = [1, 2, 3, 1, 2]  # ... and it would repeat the 3-gram (1, 2, 3)
    assert TokenSampler(GenerationParams(no_repeat_ngram_size=3)).choose(logits, generated) == 3


def test_the_format_instruction_joins_the_system_message() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    joined = with_format_instruction(
        [ChatTurn("system", "Be brief."), ChatTurn("user", "q")], schema
    )
    assert [t.role for t in joined] == ["system", "user"]
    assert (
        joined[0].content.startswith("Be brief.\n\n")
        and '{"type":"object","properties":{"a":{"type":"integer"}}}' in joined[0].content
    )
    added = with_format_instruction([ChatTurn("user", "q")], schema)
    assert [t.role for t in added] == ["system", "user"]


def test_a_reply_cut_short_inside_a_character_ends_before_it() -> None:
    # A byte-level vocabulary: token i is byte i, so "é" takes two tokens (0xC3, 0xA9).
    reply = "café".encode()
    logits = [np.where(np.arange(256) == b, 1.0, 0.0).astype(np.float32) for b in reply]

    def run(max_tokens: int) -> list[GenerationChunk]:
        steps = decode_steps(
            logits[0],
            lambda ids: bytes(ids).decode("utf-8", errors="replace"),
            lambda _token: False,
            GenerationParams(max_tokens=max_tokens, no_repeat_ngram_size=0),
            max_new_tokens=max_tokens,
            input_tokens=1,
            soft_tokens=0,
        )
        chunks, fed = [], 0
        for step in steps:
            if isinstance(step, Feed):
                fed += 1
                step.logits = logits[fed]
            else:
                chunks.append(step)
        return chunks

    assert "".join(c.text for c in run(5)) == "café"
    cut = run(4)  # the last token is the first byte of "é"
    assert "".join(c.text for c in cut) == "caf"
    assert cut[-1].finish_reason == "length"
