"""Many users at once on the real llama.cpp SmolLM2: no hangs, stopping, isolation, limits.

Every wait has a timeout, so a regression fails instead of hanging the test run.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from itertools import zip_longest
from typing import Any

import pytest
from pydantic import ValidationError

from curp_chain import CurpChatModel
from curp_chain.errors import QueueFullError, RequestTimeoutError
from curp_chain.interfaces.protocols import GenerationParams, SoftPrompt
from curp_chain.runtime.scheduler import RequestScheduler

HISTORIES = {
    "runner": ["Sunrise trail run: 18 km.", "Marathon week 12, long run 32 km."],
    "reader": ["Finished a 1,200-piece castle puzzle.", "Rainy Sunday with a fantasy novel."],
    "cook": ["Sourdough crumb improving.", "Braised lamb with rosemary tonight."],
}
QUESTIONS = ["Suggest a plan for my Saturday.", "What should I do tonight?"]
LONG = "Write a very long story about a dragon who learns to bake bread, in many chapters."


@pytest.fixture
def model(llama_backend, memory_store) -> CurpChatModel:
    model = CurpChatModel(backend=llama_backend, history_store=memory_store, max_tokens=12)
    for user, items in HISTORIES.items():
        model.add_history(user, items)
    return model


def scheduler_of(model: CurpChatModel) -> RequestScheduler:
    """The request scheduler of the model's backend (llama.cpp, from the fixtures)."""
    from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

    backend = model.get_backend()
    assert isinstance(backend, LlamaCppBackend)
    return backend.scheduler


def within(seconds: float, work: Callable[[], Any]) -> Any:
    """``work()`` on a daemon thread; fails (instead of hanging) if it takes too long."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = work()
        except BaseException as error:  # re-raised in the test
            result["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: a hang"
    if "error" in result:
        raise result["error"]
    return result["value"]


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.mark.slow
async def test_32_concurrent_astream_consumers_all_finish(model: CurpChatModel) -> None:
    users = [list(HISTORIES)[i % 3] for i in range(32)]

    async def consume(user: str, question: str) -> str:
        pieces = [str(c.content) async for c in model.astream(question, user_id=user)]
        return "".join(pieces)

    calls = [consume(u, QUESTIONS[i % 2]) for i, u in enumerate(users)]
    replies = await asyncio.wait_for(asyncio.gather(*calls), timeout=300)
    assert len(replies) == 32 and all(replies)
    assert scheduler_of(model).active == 0


def test_two_streams_read_alternately_in_one_thread_finish(model: CurpChatModel) -> None:
    def alternate() -> tuple[str, str]:
        a = model.stream(QUESTIONS[0], user_id="runner")
        b = model.stream(QUESTIONS[1], user_id="reader")
        pairs = list(zip_longest(a, b))
        return (
            "".join(str(x.content) for x, _ in pairs if x is not None),
            "".join(str(y.content) for _, y in pairs if y is not None),
        )

    first, second = within(120, alternate)
    assert first == model.invoke(QUESTIONS[0], user_id="runner").content
    assert second == model.invoke(QUESTIONS[1], user_id="reader").content


def test_an_abandoned_stream_does_not_hold_up_another_user(llama_backend) -> None:
    # Requests take turns one token each: while the abandoned one sits unread, another
    # user's whole reply is generated alongside it, not after it.
    prompt = SoftPrompt(f"<|im_start|>user\n{LONG}<|im_end|>\n<|im_start|>assistant\n", None, "")
    abandoned = llama_backend.submit(prompt, GenerationParams(max_tokens=400))
    next(abandoned)
    other = SoftPrompt("<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n", None, "")
    reply = within(120, lambda: list(llama_backend.submit(other, GenerationParams(max_tokens=8))))
    assert reply[-1].finish_reason is not None
    assert not abandoned.done  # still generating: the other reply did not wait for it
    assert abandoned.unread < 40  # it advanced about one token per token of the other reply
    abandoned.close()
    wait_until(lambda: llama_backend.scheduler.active == 0)


def test_closing_or_dropping_a_stream_stops_its_generation(model: CurpChatModel) -> None:
    scheduler = scheduler_of(model)
    start = scheduler.steps_run
    stream = model.stream(LONG, user_id="runner", max_tokens=400)
    assert isinstance(stream, Generator)  # typed as an Iterator; a generator can be closed
    next(stream)
    stream.close()
    wait_until(lambda: scheduler.active == 0)
    dropped = model.stream(LONG, user_id="reader", max_tokens=400)
    next(dropped)
    del dropped
    gc.collect()
    wait_until(lambda: scheduler.active == 0)
    assert scheduler.steps_run - start < 100  # far from the 2 x 400 tokens asked for


async def test_cancelling_an_astream_stops_its_generation(model: CurpChatModel) -> None:
    scheduler = scheduler_of(model)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in model.astream(LONG, user_id="runner", max_tokens=400):
            started.set()

    start = scheduler.steps_run
    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def idle() -> None:
        while scheduler.active:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(idle(), 30)
    assert scheduler.steps_run - start < 50


@pytest.mark.slow
async def test_each_users_reply_under_concurrency_matches_the_reply_alone(
    model: CurpChatModel,
) -> None:
    calls = [(u, q) for u in [*HISTORIES, "nobody"] for q in QUESTIONS]
    alone = [model.invoke(q, user_id=u).content for u, q in calls]
    together = await asyncio.wait_for(
        asyncio.gather(*(model.ainvoke(q, user_id=u) for u, q in calls)), timeout=300
    )
    assert [m.content for m in together] == alone
    threaded = within(300, lambda: model.batch([q for _, q in calls[:4]], user_id="runner"))
    assert [m.content for m in threaded] == [alone[0], alone[1]] * 2
    # Personalization reached the replies: different users do not all read the same.
    assert len({alone[0], alone[2], alone[4], alone[6]}) > 1


def test_threads_default_to_half_the_cores_and_are_checked(llama_backend) -> None:
    from curp_chain_integrations.backends.llamacpp import default_threads

    assert llama_backend.n_threads == default_threads() == max(1, (os.cpu_count() or 2) // 2)
    with pytest.raises(ValidationError, match="n_threads"):
        CurpChatModel(n_threads=0)


def test_a_full_queue_and_a_timeout_are_clear_errors(memory_store) -> None:
    from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(n_ctx=512, n_threads=1, slots=1, max_queued=1)
    assert backend.n_threads == 1
    model = CurpChatModel(backend=backend, history_store=memory_store, max_tokens=200)
    first = model.stream(LONG)
    assert isinstance(first, Generator)  # typed as an Iterator; a generator can be closed
    next(first)  # holds the only slot
    second = model.stream(LONG)
    assert isinstance(second, Generator)
    waiting = threading.Thread(target=lambda: next(second), daemon=True)
    waiting.start()
    wait_until(lambda: backend.scheduler.queued == 1)
    with pytest.raises(QueueFullError, match="max_queued=1"):
        model.invoke("Hi")
    first.close()
    waiting.join(60)
    second.close()
    with pytest.raises(RequestTimeoutError, match="timeout"):
        model.invoke(LONG, timeout=0.05)
    wait_until(lambda: backend.scheduler.active == 0)
    assert model.invoke("Say hi.", max_tokens=4).content  # still serving after both errors
    backend.close()


def test_concurrent_requests_decode_in_shared_rounds_on_parallel_workers(
    memory_store,
) -> None:
    from curp_chain_integrations.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(n_ctx=512, n_threads=1, slots=4, workers=2)
    assert backend.workers == backend.scheduler.lanes == 2
    model = CurpChatModel(backend=backend, history_store=memory_store, max_tokens=16)
    for user, items in HISTORIES.items():
        model.add_history(user, items)
    calls = [(u, q) for u in [*HISTORIES, "nobody"] for q in QUESTIONS][:4]
    alone = [model.invoke(q, user_id=u).content for u, q in calls]
    rounds, steps = backend.scheduler.rounds_run, backend.scheduler.steps_run
    with ThreadPoolExecutor(max_workers=4) as pool:  # all four at once
        replies = [pool.submit(model.invoke, q, user_id=u) for u, q in calls]
        together = [r.result(timeout=300).content for r in replies]
    assert together == alone  # each sequence's arithmetic is that of the request alone
    # Two requests per worker: about two tokens per decode, not one.
    assert (backend.scheduler.steps_run - steps) > 1.5 * (backend.scheduler.rounds_run - rounds)
    backend.close()


def test_workers_default_to_the_cores_the_threads_leave_and_at_most_slots() -> None:
    from curp_chain_integrations.backends.llamacpp import default_workers

    cores = os.cpu_count() or 1
    assert default_workers(1, 0) == cores
    assert default_workers(cores, 0) == 1
    assert default_workers(1, 99) == 1  # a GPU context batches on its own
