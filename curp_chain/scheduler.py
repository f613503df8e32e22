"""A request scheduler: one worker thread per backend runs every generation.

Native model contexts are not thread-safe, and a lock held between a stream's chunks
deadlocks as soon as more streams are open than threads can wait on the lock (the
event loop's default pool has a handful). So callers never run the model: they queue a
request and read its chunks from the request's own queue, from any thread, one thread
for many streams, or an event loop (without holding a pool thread while waiting).

The worker interleaves the active requests one step (one token) at a time, each in its
own slot (a KV-cache sequence, or a cache object), so a stream that is opened and never
read delays the others by one token per round, not by its whole reply. A request whose
stream is closed, garbage-collected, cancelled or past its timeout is stopped at its
next step and its slot freed.
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

T = TypeVar("T")

StartRequest = Callable[[int], Iterator[T]]
"""Called on the worker thread with a free slot number; each ``next()`` is one step."""

_END = object()


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


class RequestScheduler:
    """Runs queued requests on one worker thread, ``slots`` of them interleaved.

    Args:
        name: names the worker thread (shows in thread dumps and profilers).
        slots: requests generating at once; each step of each runs in turn.
        max_queued: requests waiting for a slot; one more raises QueueFullError.
    """

    def __init__(self, name: str, *, slots: int = 1, max_queued: int = 64):
        if slots < 1 or max_queued < 0:
            raise ValueError(f"slots must be >= 1 and max_queued >= 0, not {slots}, {max_queued}")
        self.name = name
        self.slots = slots
        self.max_queued = max_queued
        self._changed = threading.Condition()
        self._pending: deque[_Request[Any]] = deque()
        self._active: list[_Request[Any]] = []
        self._free = list(range(slots - 1, -1, -1))  # pop() hands out slot 0 first
        self._closed = False
        self._worker: threading.Thread | None = None
        self.steps_run = 0
        """Steps (tokens) run so far, over all requests: a progress counter."""

    def submit(
        self, start: StartRequest[T], *, timeout: float | None = None
    ) -> GenerationStream[T]:
        """Queue a request; ``start(slot)`` runs on the worker when a slot is free."""
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
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._worker.start()
            self._changed.notify()
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
        return len(self._active)

    def close(self) -> None:
        """Stop the worker; waiting and running requests fail with BackendError."""
        with self._changed:
            self._closed = True
            self._changed.notify()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join()

    # --- worker side ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._changed:
                self._admit()
                while not self._active and not self._closed:
                    self._changed.wait()
                    self._admit()
                if self._closed:
                    self._fail_all()
                    return
                active = list(self._active)
            for request in active:
                self._step(request)

    def _admit(self) -> None:
        while self._pending and self._free:
            request = self._pending.popleft()
            if request.cancelled or request.expired():
                request.done = True
                if not request.cancelled:
                    request.put(_Failure(request.timeout_error()))
                continue
            request.slot = self._free.pop()
            self._active.append(request)

    def _step(self, request: _Request[Any]) -> None:
        if request.cancelled or request.expired():
            self._finish(request, None if request.cancelled else _Failure(request.timeout_error()))
            return
        try:
            if request.steps is None:
                request.steps = request.start(request.slot)
            item = next(request.steps)
            self.steps_run += 1
        except StopIteration:
            self._finish(request, _END)
        except BaseException as error:  # delivered to the reader, who re-raises it
            self._finish(request, _Failure(error))
        else:
            request.put(item)

    def _finish(self, request: _Request[Any], last: Any) -> None:
        steps, request.steps = request.steps, None
        close = getattr(steps, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):  # the request is over either way
                close()  # runs the generator's cleanup (grammar samplers, caches)
        request.done = True
        if last is not None:
            request.put(last)
        with self._changed:
            self._active.remove(request)
            self._free.append(request.slot)

    def _fail_all(self) -> None:
        for request in [*self._active, *self._pending]:
            closed = BackendError("the backend was closed during the request")
            if request in self._active:
                self._finish(request, _Failure(closed))
            else:
                request.done = True
                request.put(_Failure(closed))
        self._pending.clear()


_fallbacks: weakref.WeakKeyDictionary[Any, RequestScheduler] = weakref.WeakKeyDictionary()
_fallbacks_lock = threading.Lock()


def open_stream(backend: Any, prompt: Any, params: Any, *, timeout: float | None = None) -> Any:
    """``backend.submit(...)``; a backend without a scheduler of its own gets a one-slot
    scheduler around its ``stream`` (requests then run one after another)."""
    if hasattr(backend, "submit"):
        return backend.submit(prompt, params, timeout=timeout)
    with _fallbacks_lock:
        scheduler = _fallbacks.get(backend)
        if scheduler is None:
            scheduler = _fallbacks[backend] = RequestScheduler(type(backend).__name__)
            weakref.finalize(backend, scheduler.close)
    return scheduler.submit(lambda _slot: iter(backend.stream(prompt, params)), timeout=timeout)
