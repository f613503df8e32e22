"""A bounded cache of decoded prompt prefixes, shared by the llama.cpp and transformers backends.

An agent calls the model several times per user turn, and every call starts with the same
system message and tool list, for every user: with 20 tools bound that is about 1,500 tokens
to decode before the first soft token. The backends decode that part once, keep the model's
state after it (the KV cache) here, and give each later request with the same prefix a copy.

What is cached, and why it is safe:

- The prefix of a prompt is its text before the first soft token (``SoftPrompt.before``); the
  soft tokens and everything after them are decoded for each request, never cached nor shared.
  A prompt without soft tokens has no prefix and is decoded whole, as before.
- The key is the prefix's exact token ids: another system message, one tool more or less, a
  changed template or a single different token miss. A cached state depends only on those ids,
  so a request that finds one gets the very state it would have computed itself.
- Both backends prefill a prompt with a prefix in two steps, the prefix and then the rest,
  whether the cache is on, off, cold or warm. A warm request skips the first step and runs the
  second on a copy of the same state, so its reply equals the cold reply, bit for bit (tested).
- Memory is bounded by ``capacity`` entries, the least recently used evicted first; an entry
  holds the prefix's KV cache only (llama.cpp: about 23 kB per token for SmolLM2-135M in f16;
  transformers: about 46 kB per token in float32).

Prefixes shorter than ``MIN_PREFIX_TOKENS`` are not cached: they cost little to decode, and
an entry for them would evict one worth more.

Timing: a request whose prefix is cached starts sooner, so whoever can time requests learns
whether an earlier request had the same prefix. A prefix holds the application's system
message and tools, and also the earlier turns of a conversation (they come before the last
user message, where the soft tokens go): where mutually untrusted callers can send crafted
conversations to one backend, give each its own backend or turn the cache off
(``prefix_cache_size=0``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

S = TypeVar("S")

DEFAULT_PREFIX_CACHE_SIZE = 8
"""Entries per backend: an agent with a few tool choices (each lists other tools) times a
few system messages."""

MIN_PREFIX_TOKENS = 16
"""Shortest prefix worth an entry. Saving or restoring a prefix's state takes about a
millisecond whatever its length up to 32 tokens, decoding 16 tokens about 0.1 s (llama.cpp,
SmolLM2, one thread of a loaded 2-core CPU), so any prefix that is reused pays. The bound
keeps a bare template header (a few tokens) from taking the place of a system message; the
shortest real prefix, SmolLM2's default system message with the user header, is 24 tokens."""

PrefixKey = tuple[int, ...]


@dataclass(frozen=True)
class PrefixCacheStats:
    """Counters of a backend's prefix cache since it was made (or cleared)."""

    capacity: int
    """Entries the cache holds at most (0: the cache is off)."""
    entries: int
    """Entries held now."""
    hits: int
    """Requests that restored their prefix from the cache."""
    misses: int
    """Requests with a cacheable prefix that was not cached (they decoded and saved it)."""
    evictions: int
    """Entries dropped to make room, least recently used first."""
    tokens_reused: int
    """Prompt tokens restored from the cache instead of decoded."""
    tokens_decoded: int
    """Prompt tokens (text and soft) decoded by requests, cache or not."""
    nbytes: int
    """Memory held by the entries, in bytes."""


class PrefixCache(Generic[S]):
    """A least-recently-used map from a prefix's exact token ids to the backend's saved state
    after decoding them. Thread-safe; the states are never modified once saved (a request
    restores a copy).

    Args:
        capacity: entries held at most; 0 turns the cache off (every lookup misses silently
            and nothing is saved).
        min_tokens: shortest prefix to cache.
        size_of: the bytes a state holds, for ``PrefixCacheStats.nbytes``.
    """

    def __init__(
        self,
        capacity: int = DEFAULT_PREFIX_CACHE_SIZE,
        *,
        min_tokens: int = MIN_PREFIX_TOKENS,
        size_of: Callable[[S], int] = lambda _state: 0,
    ):
        if capacity < 0 or min_tokens < 1:
            raise ValueError(
                f"prefix_cache_size must be 0 (off) or more and min_tokens 1 or more, not "
                f"{capacity} and {min_tokens}"
            )
        self.capacity = capacity
        self.min_tokens = min_tokens
        self._size_of = size_of
        self._entries: OrderedDict[PrefixKey, S] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0
        self._reused = self._decoded = 0

    def key(self, prefix: Sequence[int]) -> PrefixKey | None:
        """The key of ``prefix``, or None when it is not to be cached (too short, or the
        cache is off)."""
        if self.capacity == 0 or len(prefix) < self.min_tokens:
            return None
        return tuple(prefix)

    def get(self, key: PrefixKey) -> S | None:
        """The state saved for exactly these tokens (now the most recently used), or None."""
        with self._lock:
            state = self._entries.get(key)
            if state is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return state

    def put(self, key: PrefixKey, state: S) -> None:
        """Save ``state`` for ``key`` (replacing an equal one saved meanwhile by a concurrent
        request), evicting the least recently used entries beyond ``capacity``."""
        if self.capacity == 0:
            return
        with self._lock:
            self._entries[key] = state
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
                self._evictions += 1

    def record(self, *, decoded: int, reused: int) -> None:
        """Count one request's prompt tokens: ``decoded`` by the model, ``reused`` from here."""
        with self._lock:
            self._decoded += decoded
            self._reused += reused

    def __contains__(self, prefix: object) -> bool:
        with self._lock:
            return isinstance(prefix, Sequence) and tuple(prefix) in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._entries.clear()
            self._hits = self._misses = self._evictions = 0
            self._reused = self._decoded = 0

    @property
    def stats(self) -> PrefixCacheStats:
        """A snapshot of the counters."""
        with self._lock:
            return PrefixCacheStats(
                capacity=self.capacity,
                entries=len(self._entries),
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                tokens_reused=self._reused,
                tokens_decoded=self._decoded,
                nbytes=sum(self._size_of(s) for s in self._entries.values()),
            )
