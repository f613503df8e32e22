"""A request scheduler: one worker thread per backend runs every generation.

Native model contexts are not thread-safe, and a lock held between a stream's chunks
deadlocks as soon as more streams are open than threads can wait on the lock (the
event loop's default pool has a handful). So callers never run the model: they queue a
request and read its chunks from the request's own queue, from any thread, one thread
for many streams, or an event loop (without holding a pool thread while waiting).

The worker interleaves the active requests one step (one token) at a time, each in its
own slot (a KV-cache sequence, or a cache object), so a stream that is opened and never
read delays the others by one token per round, not by its whole reply. A backend that can
decode several sequences at once gives the scheduler a ``run_round`` function: each
request's steps then yield a ``RoundWork`` (the token it needs decoded) instead of
decoding it, and the round's work runs in one call, one batch for all active requests.

A request whose stream is closed, garbage-collected, cancelled or past its timeout is
stopped at its next step and its slot freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

from curp_chain.errors import BackendError, QueueFullError, RequestTimeoutError
from curp_chain.interfaces.protocols import (
    ChunkStream,
    GenerationParams,
    ScheduledBackend,
    SoftPrompt,
    SoftPromptBackend,
)

T = TypeVar("T")

StartRequest = Callable[[int], Iterator["T | RoundWork"]]
"""Called on the worker thread with a free slot number; each ``next()`` is one step."""

_END = object()


class RoundWork:
    """Base class of the work a request's steps hand to the scheduler's ``run_round``
    (yielded instead of an output); the request is resumed after the round ran it."""


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class _Request(Generic[T]):
    """One request's state, shared by the worker (producer) and its stream (consumer)."""

    def __init__(self, start: StartRequest[T], timeout: float | None):
        self.start = start
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.steps: Iterator[T] | None = None
        self.slot = -1
        self.cancelled = False
        self.done = False
        self.items: deque[Any] = deque()
        self.ready = threading.Condition()
        self.waker: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def timeout_error(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"the request did not finish within its timeout of {self.timeout} s; "
            "raise the timeout or lower max_tokens"
        )

    def put(self, item: Any) -> None:
        """Hand an item to the consumer (worker side)."""
        with self.ready:
            self.items.append(item)
            self.ready.notify()
            waker, self.waker = self.waker, None
        if waker is not None:
            loop, event = waker
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closed: nobody will read this request
                self.cancelled = True


class GenerationStream(Generic[T]):
    """The output of one queued request, read with ``for`` or ``async for``.

    ``close()`` (also on garbage collection) stops the request's generation at its next
    step. A timeout raises RequestTimeoutError and stops it too.
    """

    def __init__(self, request: _Request[T], scheduler: RequestScheduler):
        self._request = request
        self._close = weakref.finalize(self, scheduler.cancel, request)

    def close(self) -> None:
        self._close()

    @property
    def done(self) -> bool:
        """Whether the request's generation is over (finished, failed or stopped)."""
        return self._request.done

    @property
    def unread(self) -> int:
        """Chunks generated and not read yet."""
        return len(self._request.items)

    def _unwrap(self, item: Any, end: type[Exception]) -> T:
        if item is _END:
            self._close()
            raise end
        if isinstance(item, _Failure):
            self._close()
            raise item.error
        return item

    def _expire(self) -> RequestTimeoutError:
        self._close()
        return self._request.timeout_error()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        request = self._request
        with request.ready:
            while not request.items:
                remaining = request.remaining()
                if remaining is not None and remaining <= 0:
                    break
                request.ready.wait(remaining)
            timed_out = not request.items
            item = None if timed_out else request.items.popleft()
        if timed_out:
            raise self._expire()
        return self._unwrap(item, StopIteration)

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        request = self._request
        loop = asyncio.get_running_loop()
        while True:
            with request.ready:
                if request.items:
                    item = request.items.popleft()
                    break
                event = asyncio.Event()
                request.waker = (loop, event)
            try:
                await asyncio.wait_for(event.wait(), request.remaining())
            except TimeoutError:
                raise self._expire() from None
            except asyncio.CancelledError:
                self._close()
                raise
        return self._unwrap(item, StopAsyncIteration)


class _Lane:
    """One worker thread and the slots it owns (slot % lanes == index)."""

    def __init__(self, index: int, slots: list[int]):
        self.index = index
        self.free = sorted(slots, reverse=True)  # pop() hands out the lowest slot first
        self.active: list[_Request[Any]] = []
        self.worker: threading.Thread | None = None


class RequestScheduler:
    """Runs queued requests on worker threads, ``slots`` of them at once.

    Each worker (a lane) owns ``slots / lanes`` of the slots (slot ``s`` belongs to lane
    ``s % lanes``) and interleaves its requests one step at a time; lanes run in parallel,
    one thread each (a backend gives each lane its own model context). A new request goes
    to the least busy lane.

    Args:
        name: names the worker threads (shows in thread dumps and profilers).
        slots: requests generating at once; each step of each runs in turn.
        max_queued: requests waiting for a slot; one more raises QueueFullError.
        run_round: runs the ``RoundWork`` that one lane's active requests yielded in one
            round, all at once (one batched decode); None when requests never yield any.
        lanes: worker threads, at most ``slots``.
    """

    def __init__(
        self,
        name: str,
        *,
        slots: int = 1,
        max_queued: int = 64,
        run_round: Callable[[list[Any]], None] | None = None,
        lanes: int = 1,
    ):
        if slots < 1 or max_queued < 0 or not 1 <= lanes <= slots:
            raise ValueError(
                "slots must be >= 1, max_queued >= 0 and lanes between 1 and slots, not "
                f"{slots}, {max_queued}, {lanes}"
            )
        self.name = name
        self.slots = slots
        self.max_queued = max_queued
        self._run_round = run_round
        self._changed = threading.Condition()
        self._pending: deque[_Request[Any]] = deque()
        self._lanes = [_Lane(i, list(range(i, slots, lanes))) for i in range(lanes)]
        self._closed = False
        self._steps = [0] * lanes
        self._rounds = [0] * lanes

    @property
    def lanes(self) -> int:
        """Worker threads, each with its own share of the slots."""
        return len(self._lanes)

    @property
    def steps_run(self) -> int:
        """Steps (tokens) run so far, over all requests: a progress counter."""
        return sum(self._steps)

    @property
    def rounds_run(self) -> int:
        """Calls of ``run_round`` so far: with batching, fewer than the steps run."""
        return sum(self._rounds)

    def submit(
        self, start: StartRequest[T], *, timeout: float | None = None
    ) -> GenerationStream[T]:
        """Queue a request; ``start(slot)`` runs on a worker when a slot is free."""
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        request = _Request(start, timeout)
        with self._changed:
            if self._closed:
                raise BackendError("the backend is closed")
            if len(self._pending) >= self.max_queued:
                raise QueueFullError(
                    f"{len(self._pending)} requests are already waiting for {self.name} "
                    f"(max_queued={self.max_queued}); retry later or raise max_queued"
                )
            self._pending.append(request)
            for lane in self._lanes:
                if lane.worker is None:
                    lane.worker = threading.Thread(
                        target=self._run, args=(lane,), name=f"{self.name} #{lane.index}"
                    )
                    lane.worker.daemon = True
                    lane.worker.start()
            self._changed.notify_all()  # idle lanes wait; the least busy one admits it
        return GenerationStream(request, self)

    @staticmethod
    def cancel(request: _Request[Any]) -> None:
        # The worker sees the flag at the request's next step; it never sleeps while
        # requests are active, so no wake-up is needed.
        request.cancelled = True

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return len(self._pending)

    @property
    def active(self) -> int:
        """Requests holding a slot (generating)."""
        return sum(len(lane.active) for lane in self._lanes)

    def close(self) -> None:
        """Stop the workers; waiting and running requests fail with BackendError."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            workers = [lane.worker for lane in self._lanes]
        for worker in workers:
            if worker is not None and worker is not threading.current_thread():
                worker.join()

    # --- worker side ----------------------------------------------------------------
    def _run(self, lane: _Lane) -> None:
        while True:
            with self._changed:
                self._admit(lane)
                while not lane.active and not self._closed:
                    self._changed.wait()
                    self._admit(lane)
                if self._closed:
                    self._fail_all(lane)
                    return
                active = list(lane.active)
            work = [(request, self._advance(request, lane)) for request in active]
            self._run_work([(request, item) for request, item in work if item is not None], lane)

    def _admit(self, lane: _Lane) -> None:
        """Take waiting requests into free slots while no other lane is less busy."""
        while self._pending and lane.free:
            others = [len(o.active) for o in self._lanes if o is not lane and o.free]
            if others and min(others) < len(lane.active):
                return  # an idler lane takes it, in parallel with this one
            request = self._pending.popleft()
            if request.cancelled or request.expired():
                request.done = True
                if not request.cancelled:
                    request.put(_Failure(request.timeout_error()))
                continue
            request.slot = lane.free.pop()
            lane.active.append(request)

    def _advance(self, request: _Request[Any], lane: _Lane) -> RoundWork | None:
        """Run one step of ``request``: up to its next output, or (batched) up to the work
        it needs from this round, returned."""
        if request.cancelled or request.expired():
            failure = None if request.cancelled else _Failure(request.timeout_error())
            self._finish(request, failure, lane)
            return None
        try:
            if request.steps is None:
                request.steps = request.start(request.slot)
            while True:
                item = next(request.steps)
                if isinstance(item, RoundWork):
                    self._steps[lane.index] += 1
                    return item
                request.put(item)
                if self._run_round is None:  # one output is one step
                    self._steps[lane.index] += 1
                    return None
        except StopIteration:
            self._finish(request, _END, lane)
        except BaseException as error:  # delivered to the reader, who re-raises it
            self._finish(request, _Failure(error), lane)
        return None

    def _run_work(self, work: list[tuple[_Request[Any], RoundWork]], lane: _Lane) -> None:
        if not work:
            return
        if self._run_round is None:
            error: BaseException = BackendError("a request yielded work this backend cannot run")
        else:
            try:
                self._run_round([item for _, item in work])
                self._rounds[lane.index] += 1
                return
            except BaseException as failure:  # every request of the round shares it
                error = failure
        for request, _ in work:
            self._finish(request, _Failure(error), lane)

    def _finish(self, request: _Request[Any], last: Any, lane: _Lane) -> None:
        steps, request.steps = request.steps, None
        close = getattr(steps, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):  # the request is over either way
                close()  # runs the generator's cleanup (grammar samplers, caches)
        with self._changed:  # before the reader hears of the end, so counts agree
            lane.active.remove(request)
            lane.free.append(request.slot)
        request.done = True
        if last is not None:
            request.put(last)

    def _fail_all(self, lane: _Lane) -> None:
        """On close: fail this lane's requests and every waiting one."""
        for request in list(lane.active):
            self._finish(
                request, _Failure(BackendError("the backend was closed during the request")), lane
            )
        for request in self._pending:
            request.done = True
            request.put(_Failure(BackendError("the backend was closed during the request")))
        self._pending.clear()


_fallbacks: weakref.WeakKeyDictionary[SoftPromptBackend, RequestScheduler] = (
    weakref.WeakKeyDictionary()
)
_fallbacks_lock = threading.Lock()


def open_stream(
    backend: SoftPromptBackend,
    prompt: SoftPrompt,
    params: GenerationParams,
    *,
    timeout: float | None = None,
) -> ChunkStream:
    """Queue the request: on the backend's own scheduler (a `ScheduledBackend`), or else
    on a one-slot scheduler around its ``stream`` (requests then run one after another)."""
    if isinstance(backend, ScheduledBackend):
        return backend.submit(prompt, params, timeout=timeout)
    with _fallbacks_lock:
        scheduler = _fallbacks.get(backend)
        if scheduler is None:
            scheduler = _fallbacks[backend] = RequestScheduler(type(backend).__name__)
            weakref.finalize(backend, scheduler.close)
    return scheduler.submit(lambda _slot: iter(backend.stream(prompt, params)), timeout=timeout)
