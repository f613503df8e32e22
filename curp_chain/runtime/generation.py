"""Backend-neutral decoding: sampling, n-gram blocking, stop sequences, streaming text.

Both backends prefill their own way, then hand this loop a ``feed`` function that
decodes one token and returns the next logits. One loop means both backends stop,
sample and block repeats identically.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from curp_chain.interfaces.protocols import GenerationChunk, GenerationParams, TokenLogprob

Logits = npt.NDArray[np.float32]


NO_ECHO_NGRAM = 2
"""No two tokens in a row of a ``no_echo`` passage may appear in the reply: against a longer
n-gram, a small model echoes the passage all the same with one word changed ("Some things I
written about: ...")."""


def banned_by_ngrams(generated: Sequence[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram already present in ``generated``.

    Only generated tokens count, not the prompt: a paraphrase must be free to reuse the
    source's wording.
    """
    if n <= 0 or len(generated) < n:
        return set()
    return continuations(generated, generated[len(generated) - n + 1 :], n)


def banned_by_echo(generated: Sequence[int], passages: Sequence[Sequence[int]]) -> set[int]:
    """Tokens that would complete, after the reply's last tokens, an n-gram of
    ``NO_ECHO_NGRAM`` tokens of one of ``passages`` (the tokens of
    ``GenerationParams.no_echo``)."""
    if not generated:
        return set()
    banned: set[int] = set()
    for passage in passages:
        banned |= continuations(passage, generated[-NO_ECHO_NGRAM + 1 :], NO_ECHO_NGRAM)
    return banned


def continuations(tokens: Sequence[int], prefix: Sequence[int], n: int) -> set[int]:
    """The tokens that follow ``prefix`` (n - 1 tokens) in the n-grams of ``tokens``."""
    wanted = tuple(prefix)
    return {
        tokens[start + n - 1]
        for start in range(len(tokens) - n + 1)
        if tuple(tokens[start : start + n - 1]) == wanted
    }


class TokenSampler:
    """Greedy when temperature is 0, else temperature + nucleus (top-p) sampling."""

    def __init__(self, params: GenerationParams, echo: Sequence[Sequence[int]] = ()):
        self.params = params
        self.echo = echo
        """The tokens of ``params.no_echo``'s passages."""
        self.rng = np.random.default_rng(params.seed)

    def choose(self, logits: Logits, generated: Sequence[int]) -> int:
        scores = logits.astype(np.float64, copy=True)
        banned = banned_by_ngrams(generated, self.params.no_repeat_ngram_size)
        banned |= banned_by_echo(generated, self.echo)
        for token in banned:
            scores[token] = -np.inf
        if banned and not np.isfinite(scores).any():  # a grammar allowed only repeats
            scores = logits.astype(np.float64, copy=True)
        if self.params.temperature <= 0:
            return int(np.argmax(scores))
        scores = scores / self.params.temperature
        scores -= scores.max()
        probs = np.exp(scores)
        probs /= probs.sum()
        if self.params.top_p < 1.0:
            order = np.argsort(-probs)
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, self.params.top_p)) + 1]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self.rng.choice(len(probs), p=probs))


def token_logprob(
    logits: Logits, token: int, top: int, detokenize: Callable[[list[int]], str]
) -> TokenLogprob:
    """``token``'s log-probability under ``logits`` and the ``top`` likeliest tokens."""
    scores = logits.astype(np.float64)
    shifted = scores - scores.max()
    logprobs = shifted - np.log(np.exp(shifted).sum())
    top = min(top, len(logprobs))
    best = np.argpartition(-logprobs, top - 1)[:top] if top else np.array([], dtype=np.int64)
    best = np.sort(best)  # equal log-probabilities: the lower token id first
    best = best[np.argsort(-logprobs[best], kind="stable")]
    return TokenLogprob(
        detokenize([token]),
        float(logprobs[token]),
        tuple((detokenize([int(t)]), float(logprobs[t])) for t in best),
    )


class TokenConstraint(Protocol):
    """Restricts which tokens may come next (a grammar); asked before every token."""

    def allowed(self, logits: Logits) -> Logits:
        """``logits`` with every token the constraint forbids set to -inf."""
        ...

    def accept(self, token: int) -> None:
        """Advance past ``token``, which ``allowed`` permitted."""
        ...


def find_stop(text: str, stops: Sequence[str]) -> tuple[int, int]:
    """(index of the earliest complete stop, length of the longest stop prefix at the end).

    The index is -1 when no stop sequence occurs; the held-back suffix must not be
    streamed yet, because the next token may complete a stop sequence.
    """
    first = -1
    for stop in stops:
        at = text.find(stop)
        if at != -1 and (first == -1 or at < first):
            first = at
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                hold = max(hold, size)
                break
    return first, hold


class Feed:
    """A sampled token that must be decoded before the loop can go on: whoever drives
    ``decode_steps`` decodes ``token`` (alone, or batched with other requests' tokens)
    and sets ``logits`` to the next-token logits before resuming it."""

    __slots__ = ("logits", "token")

    def __init__(self, token: int):
        self.token = token
        self.logits: Logits | None = None


def decode_loop(
    first_logits: Logits,
    feed: Callable[[int], Logits],
    detokenize: Callable[[list[int]], str],
    is_end_of_turn: Callable[[int], bool],
    params: GenerationParams,
    *,
    max_new_tokens: int,
    input_tokens: int,
    soft_tokens: int,
    constraint: TokenConstraint | None = None,
    echo: Sequence[Sequence[int]] = (),
) -> Iterator[GenerationChunk]:
    """Sample up to ``max_new_tokens`` tokens, streaming text as it becomes final; each
    sampled token is decoded at once through ``feed``. ``echo`` holds the tokens of
    ``params.no_echo``'s passages."""
    steps = decode_steps(
        first_logits,
        detokenize,
        is_end_of_turn,
        params,
        max_new_tokens=max_new_tokens,
        input_tokens=input_tokens,
        soft_tokens=soft_tokens,
        constraint=constraint,
        echo=echo,
    )
    for step in steps:
        if isinstance(step, Feed):
            step.logits = feed(step.token)
        else:
            yield step


def decode_steps(
    first_logits: Logits,
    detokenize: Callable[[list[int]], str],
    is_end_of_turn: Callable[[int], bool],
    params: GenerationParams,
    *,
    max_new_tokens: int,
    input_tokens: int,
    soft_tokens: int,
    constraint: TokenConstraint | None = None,
    echo: Sequence[Sequence[int]] = (),
) -> Iterator[GenerationChunk | Feed]:
    """``decode_loop`` with the decoding left to the caller: yields text chunks, and a
    ``Feed`` for every token to decode, resumed once its ``logits`` are set. ``echo`` holds
    the tokens of ``params.no_echo``'s passages."""
    sampler = TokenSampler(params, echo)
    generated: list[int] = []
    emitted = 0
    logits = first_logits
    finish = "length"
    text = ""
    pending: list[TokenLogprob] = []  # reported with the next chunk that carries text
    while len(generated) < max_new_tokens:
        token = sampler.choose(constraint.allowed(logits) if constraint else logits, generated)
        if is_end_of_turn(token):
            finish = "stop"
            break
        if constraint:
            constraint.accept(token)
        if params.logprobs:
            pending.append(token_logprob(logits, token, params.top_logprobs, detokenize))
        generated.append(token)
        text = detokenize(generated)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its rest
            if len(generated) < max_new_tokens:
                logits = yield from _fed(token)
            continue
        stop_at, hold = find_stop(text, params.stop)
        if stop_at != -1:
            text = text[:stop_at]
            finish = "stop"
            break
        ready = len(text) - hold
        if ready > emitted:
            yield GenerationChunk(text[emitted:ready], token_ids=(token,), logprobs=tuple(pending))
            emitted, pending = ready, []
        if len(generated) < max_new_tokens:
            logits = yield from _fed(token)
    if finish == "length" and text.endswith("\ufffd"):
        text = text.rstrip("\ufffd")  # cut short inside a character: its rest never came
    usage = {
        "input_tokens": input_tokens,
        "output_tokens": len(generated),
        "soft_tokens": soft_tokens,
    }
    yield GenerationChunk(
        text[emitted:], finish_reason=finish, usage=usage, logprobs=tuple(pending)
    )


def _fed(token: int) -> Generator[Feed, None, Logits]:
    """Yield ``token`` to be decoded; return the logits the driver set."""
    step = Feed(token)
    yield step
    if step.logits is None:
        raise RuntimeError("a decode step was resumed without its logits")
    return step.logits
