"""The request scheduler on plain Python work: ordering, errors, closing, timeouts, limits.

Each request here is a real generator run on the scheduler's worker thread; the model
backends' use of the scheduler is tested in test_serving.py.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from curp_chain.errors import BackendError, QueueFullError, RequestTimeoutError
from curp_chain.runtime.scheduler import RequestScheduler, RoundWork


def counter(
    n: int, log: list[tuple[int, int]], slot_seen: list[int]
) -> Callable[[int], Iterator[int]]:
    def start(slot: int) -> Iterator[int]:
        slot_seen.append(slot)
        for i in range(n):
            log.append((slot, i))
            yield i

    return start


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_each_request_reads_its_own_items_in_order() -> None:
    scheduler = RequestScheduler("test", slots=2)
    log: list[tuple[int, int]] = []
    slots: list[int] = []
    first = scheduler.submit(counter(5, log, slots))
    second = scheduler.submit(counter(3, log, slots))
    assert [(next(first), next(second)) for _ in range(3)] == [(0, 0), (1, 1), (2, 2)]
    assert list(second) == []
    assert list(first) == [3, 4]
    assert sorted(slots) == [0, 1]
    scheduler.close()


def test_active_requests_take_turns_one_step_each() -> None:
    scheduler = RequestScheduler("test", slots=2)
    log: list[tuple[int, int]] = []
    slots: list[int] = []
    gate = threading.Event()

    def held(slot: int) -> Iterator[int]:
        gate.wait(10)  # both requests are admitted before either steps far
        yield from counter(4, log, slots)(slot)

    a, b = scheduler.submit(held), scheduler.submit(held)
    wait_until(lambda: scheduler.active == 2 or len(log) > 0)
    gate.set()
    assert list(a) == list(b) == [0, 1, 2, 3]
    steps_by_slot = [slot for slot, _ in log]
    # Interleaved, not one request after the other.
    assert steps_by_slot != sorted(steps_by_slot)
    scheduler.close()


def test_an_error_in_a_request_reaches_its_reader_only() -> None:
    scheduler = RequestScheduler("test", slots=2)

    def failing(_slot: int) -> Iterator[int]:
        yield 1
        raise BackendError("decode failed")

    bad = scheduler.submit(failing)
    good = scheduler.submit(counter(3, [], []))
    assert next(bad) == 1
    with pytest.raises(BackendError, match="decode failed"):
        next(bad)
    assert list(good) == [0, 1, 2]
    assert scheduler.active == 0
    scheduler.close()


def test_closing_or_dropping_a_stream_stops_its_generation() -> None:
    scheduler = RequestScheduler("test", slots=1)
    cleaned: list[str] = []

    def endless(_slot: int) -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            cleaned.append("done")

    stream = scheduler.submit(endless)
    assert next(stream) == 0
    stream.close()
    wait_until(lambda: scheduler.active == 0)
    assert cleaned == ["done"] and stream.done

    dropped = scheduler.submit(endless)
    next(dropped)
    del dropped
    gc.collect()
    wait_until(lambda: scheduler.active == 0)
    assert cleaned == ["done", "done"]
    # The slot is free again: a new request runs.
    assert list(scheduler.submit(counter(2, [], []))) == [0, 1]
    scheduler.close()


def test_a_full_queue_is_refused_with_a_clear_error() -> None:
    scheduler = RequestScheduler("test", slots=1, max_queued=2)
    gate = threading.Event()

    def blocked(_slot: int) -> Iterator[int]:
        gate.wait(10)
        yield 0

    streams = [scheduler.submit(blocked)]
    wait_until(lambda: scheduler.active == 1)
    streams += [scheduler.submit(blocked), scheduler.submit(blocked)]
    with pytest.raises(QueueFullError, match="max_queued=2"):
        scheduler.submit(blocked)
    gate.set()
    assert [list(s) for s in streams] == [[0], [0], [0]]
    scheduler.close()


def test_a_timeout_stops_the_request_and_frees_its_slot() -> None:
    scheduler = RequestScheduler("test", slots=1)

    def slow(_slot: int) -> Iterator[int]:
        while True:
            time.sleep(0.02)
            yield 0

    stream = scheduler.submit(slow, timeout=0.2)
    with pytest.raises(RequestTimeoutError, match="0.2 s"):
        list(stream)
    wait_until(lambda: scheduler.active == 0)
    # Waiting in the queue counts too: behind a busy slot, the request times out unstarted.
    busy = scheduler.submit(slow)
    waiting = scheduler.submit(counter(1, [], []), timeout=0.1)
    with pytest.raises(RequestTimeoutError):
        next(waiting)
    busy.close()
    scheduler.close()


async def test_async_readers_wait_without_threads_and_cancel_stops_generation() -> None:
    scheduler = RequestScheduler("test", slots=4, max_queued=100)
    before = threading.active_count()
    streams = [scheduler.submit(counter(20, [], [])) for _ in range(50)]

    async def read(stream) -> list[int]:
        return [item async for item in stream]

    results = await asyncio.wait_for(asyncio.gather(*(read(s) for s in streams)), 30)
    assert results == [list(range(20))] * 50
    assert threading.active_count() <= before + 1  # the worker, nothing per reader

    endless = scheduler.submit(counter(10**9, [], []))
    task = asyncio.create_task(read(endless))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # On a busy machine the worker may not have started the request yet: then it drops it
    # when it comes to admit it. Either way the request ends without being read.
    await asyncio.wait_for(_until(lambda: endless.done), 10)
    assert scheduler.active == 0
    scheduler.close()


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_close_fails_open_requests_and_refuses_new_ones() -> None:
    scheduler = RequestScheduler("test", slots=1)
    gate = threading.Event()

    def blocked(_slot: int) -> Iterator[int]:
        yield 0
        gate.wait(10)
        yield 1

    running = scheduler.submit(blocked)
    assert next(running) == 0
    closer = threading.Thread(target=scheduler.close)
    closer.start()
    gate.set()
    closer.join(10)
    assert not closer.is_alive()
    with pytest.raises(BackendError, match="closed"):
        list(running)
    with pytest.raises(BackendError, match="closed"):
        scheduler.submit(counter(1, [], []))


class Square(RoundWork):
    """Work a request hands to the round: square ``value``."""

    def __init__(self, value: int):
        self.value = value
        self.result: int | None = None


def squares(n: int) -> Callable[[int], Iterator[int | RoundWork]]:
    def start(_slot: int) -> Iterator[int | RoundWork]:
        for i in range(n):
            work = Square(i)
            yield work
            assert work.result is not None
            yield work.result

    return start


def test_a_round_runs_the_work_of_every_active_request_in_one_call() -> None:
    rounds: list[list[int]] = []

    submitted = threading.Event()

    def run_round(work: list[Square]) -> None:
        submitted.wait(10)  # the first round waits until all three are queued
        rounds.append([w.value for w in work])
        for w in work:
            w.result = w.value * w.value

    scheduler = RequestScheduler("test", slots=3, run_round=run_round)
    long = scheduler.submit(squares(200))
    short = [scheduler.submit(squares(4)) for _ in range(2)]
    submitted.set()
    assert [list(s) for s in short] == [[0, 1, 4, 9]] * 2
    assert list(long) == [i * i for i in range(200)]
    assert max(len(r) for r in rounds) == 3  # one call for all three requests
    assert scheduler.rounds_run == len(rounds) < scheduler.steps_run == 208
    scheduler.close()


def test_a_failed_round_fails_its_requests_and_the_scheduler_goes_on() -> None:
    failures = [True]

    def run_round(work: list[Square]) -> None:
        if failures.pop() if failures else False:
            raise BackendError("decode failed")
        for w in work:
            w.result = w.value * w.value

    scheduler = RequestScheduler("test", slots=2, run_round=run_round)
    with pytest.raises(BackendError, match="decode failed"):
        list(scheduler.submit(squares(3)))
    assert list(scheduler.submit(squares(3))) == [0, 1, 4]
    assert scheduler.active == 0
    scheduler.close()
