"""Neutral paraphrase sources for training targets, written by an LLM and cached.

A training example asks the LLM to rewrite a neutral paraphrase of a real tweet in its
author's voice, as LaMP-7 does. LaMP-7's paraphrases were written by an LLM; sources made
by deterministic clean-up are nearly the target itself and teach the model to copy, so
sources here are LLM paraphrases (the bundled model through llama.cpp by default), and
clean-up variants are only an optional augmentation. The cache and the acceptance check live
in :mod:`curp_chain.data.sources`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace

from tqdm.auto import tqdm

from curp_chain.data.sources import SourceCache, check_paraphrase
from curp_chain.interfaces.protocols import GenerationParams, SoftPrompt, SoftPromptBackend
from curp_chain.runtime.prompt import ChatTurn, build_soft_prompt
from curp_chain.tasks.lamp7 import LAMP7_INSTRUCTION

logger = logging.getLogger(__name__)

PARAPHRASE_REQUEST = LAMP7_INSTRUCTION + "{tweet}"
"""The request sent to the paraphrasing LLM ({tweet} is replaced by the tweet): LaMP-7's own
instruction, since LaMP-7's sources were made by an LLM asked to paraphrase. Of the prompts
tried with SmolLM2-135M it copied the tweet least often."""

SAMPLED_RETRY = GenerationParams(temperature=0.8, top_p=0.95, no_repeat_ngram_size=4)
"""How a rejected greedy paraphrase is retried (``candidates`` > 0): a sampled rewording."""


def _request(backend: SoftPromptBackend, tweet: str) -> tuple[SoftPrompt, int]:
    """The paraphrase prompt for ``tweet`` and its output limit: 1.5 times the tweet's
    length plus 8 tokens, which a paraphrase never needs and a runaway output always
    reaches."""
    prompt = build_soft_prompt(
        backend.chat_template,
        [ChatTurn("user", PARAPHRASE_REQUEST.format(tweet=tweet))],
        None,
        backend.special_tokens,
    )
    return prompt, min(128, int(1.5 * backend.count_tokens(tweet)) + 8)


def paraphrase(
    backend: SoftPromptBackend, tweet: str, params: GenerationParams | None = None
) -> tuple[str, bool]:
    """One paraphrase of ``tweet`` by ``backend`` (greedy unless ``params`` say otherwise;
    repeated 4-grams blocked), and whether it was cut off by the output limit."""
    prompt, max_tokens = _request(backend, tweet)
    params = replace(params or GenerationParams(temperature=0.0), max_tokens=max_tokens)
    chunks = list(backend.stream(prompt, params))
    return "".join(c.text for c in chunks), chunks[-1].finish_reason == "length"


def paraphrase_many(
    backend: SoftPromptBackend, tweets: Sequence[str], params: GenerationParams | None = None
) -> list[tuple[str, bool]]:
    """:func:`paraphrase` for several tweets; decoded side by side where the backend can
    (the transformers backend's ``generate_batch``, fast on a GPU), else one by one."""
    generate_batch = getattr(backend, "generate_batch", None)
    if generate_batch is None or len(tweets) == 1:
        return [paraphrase(backend, tweet, params) for tweet in tweets]
    requests = [_request(backend, tweet) for tweet in tweets]
    texts = [prompt.before + prompt.after for prompt, _ in requests]
    replies = generate_batch(
        texts, params or GenerationParams(temperature=0.0), [limit for _, limit in requests]
    )
    return [(text, reason == "length") for text, reason in replies]


def generate_sources(
    backend: SoftPromptBackend,
    tweets: Iterable[str],
    cache: SourceCache,
    *,
    generator: str,
    limit: int | None = None,
    time_budget_s: float | None = None,
    batch_size: int = 1,
    candidates: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """Paraphrase every tweet not yet in ``cache``, appending results as they come.

    ``batch_size`` tweets are paraphrased side by side where the backend can. A greedy
    paraphrase that :func:`check_paraphrase` rejects is retried up to ``candidates`` times
    with sampling (:data:`SAMPLED_RETRY`); the first accepted output is kept. Stops after
    ``limit`` new tweets or ``time_budget_s`` seconds; returns counts per status of this run.
    """
    todo = [t for t in dict.fromkeys(tweets) if t not in cache]
    if limit is not None:
        todo = todo[:limit]
    counts: dict[str, int] = {}
    start = time.monotonic()
    bar = tqdm(total=len(todo), desc="paraphrasing", unit="tweet", disable=not progress)
    for first in range(0, len(todo), max(1, batch_size)):
        if time_budget_s is not None and time.monotonic() - start > time_budget_s:
            logger.info("time budget of %.0f s reached", time_budget_s)
            break
        batch = todo[first : first + max(1, batch_size)]
        outputs = dict(zip(batch, paraphrase_many(backend, batch), strict=True))
        checks = {t: check_paraphrase(t, o, truncated=c) for t, (o, c) in outputs.items()}
        names = dict.fromkeys(batch, generator)
        for attempt in range(candidates):
            rejected = [t for t in batch if checks[t].status != "ok"]
            if not rejected:
                break
            params = replace(SAMPLED_RETRY, seed=seed + attempt + first)
            for tweet, (output, cut) in zip(
                rejected, paraphrase_many(backend, rejected, params), strict=True
            ):
                check = check_paraphrase(tweet, output, truncated=cut)
                if check.status == "ok":
                    outputs[tweet], checks[tweet] = (output, cut), check
                    names[tweet] = f"{generator} (sampled, t={SAMPLED_RETRY.temperature})"
        for tweet in batch:
            cache.add(tweet, outputs[tweet][0], checks[tweet], names[tweet])
            counts[checks[tweet].status] = counts.get(checks[tweet].status, 0) + 1
        done = sum(counts.values())
        bar.update(len(batch))
        bar.set_postfix(ok=f"{counts.get('ok', 0) / done:.0%}", cached=len(cache))
    bar.close()
    return counts
