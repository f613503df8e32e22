"""The prefix cache's bookkeeping: exact-token keys, least-recently-used eviction, counters."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from curp_chain_integrations.backends.prefix_cache import PrefixCache, PrefixCacheStats

PREFIX = list(range(100, 140))


def test_a_prefix_is_found_only_under_exactly_its_token_ids() -> None:
    cache: PrefixCache[str] = PrefixCache(4, min_tokens=4)
    key = cache.key(PREFIX)
    assert key is not None
    cache.put(key, "state")
    assert cache.get(tuple(PREFIX)) == "state"
    changed = [*PREFIX[:10], PREFIX[10] + 1, *PREFIX[11:]]
    for other in (changed, PREFIX[:-1], [*PREFIX, 7], PREFIX[1:]):
        assert cache.key(other) is not None
        assert cache.get(tuple(other)) is None
    assert (cache.stats.hits, cache.stats.misses) == (1, 4)


def test_a_short_prefix_or_a_cache_of_size_zero_gives_no_key() -> None:
    assert PrefixCache[str](4, min_tokens=16).key(list(range(15))) is None
    assert PrefixCache[str](4, min_tokens=16).key(list(range(16))) == tuple(range(16))
    off: PrefixCache[str] = PrefixCache(0)
    assert off.key(PREFIX) is None
    off.put(tuple(PREFIX), "state")  # ignored
    assert len(off) == 0 and off.stats.capacity == 0


def test_the_least_recently_used_prefix_is_evicted_first() -> None:
    cache: PrefixCache[str] = PrefixCache(2, min_tokens=1)
    cache.put((1,), "one")
    cache.put((2,), "two")
    assert cache.get((1,)) == "one"  # now (2,) is the least recently used
    cache.put((3,), "three")
    assert (1,) in cache and (3,) in cache and (2,) not in cache
    assert cache.stats.evictions == 1 and cache.stats.entries == 2


def test_saving_a_prefix_again_replaces_it_without_an_eviction() -> None:
    cache: PrefixCache[str] = PrefixCache(2, min_tokens=1)
    cache.put((1,), "first")
    cache.put((1,), "second")  # a concurrent request decoded the same prefix
    assert cache.get((1,)) == "second"
    assert cache.stats.entries == 1 and cache.stats.evictions == 0


def test_counters_add_up_and_clear_resets_them() -> None:
    cache: PrefixCache[bytes] = PrefixCache(3, min_tokens=1, size_of=len)
    cache.put((1, 2), b"x" * 10)
    cache.put((3, 4), b"y" * 5)
    cache.record(decoded=12, reused=0)
    cache.record(decoded=4, reused=8)
    stats = cache.stats
    assert (stats.tokens_decoded, stats.tokens_reused, stats.nbytes) == (16, 8, 15)
    cache.clear()
    assert cache.stats == PrefixCacheStats(3, 0, 0, 0, 0, 0, 0, 0)


def test_a_negative_size_is_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match="-1"):
        PrefixCache[str](-1)


operations = st.lists(
    st.tuples(st.sampled_from(["get", "put"]), st.lists(st.integers(0, 3), max_size=4)),
    max_size=60,
)


@given(capacity=st.integers(0, 4), ops=operations)
def test_the_cache_behaves_as_a_bounded_lru_map_for_any_sequence_of_calls(
    capacity: int, ops: list[tuple[str, list[int]]]
) -> None:
    cache: PrefixCache[int] = PrefixCache(capacity, min_tokens=1)
    model: OrderedDict[tuple[int, ...], int] = OrderedDict()
    for step, (operation, tokens) in enumerate(ops):
        key = cache.key(tokens)
        if key is None:
            assert capacity == 0 or not tokens
            continue
        if operation == "put":
            cache.put(key, step)
            model[key] = step
            model.move_to_end(key)
            while len(model) > capacity:
                model.popitem(last=False)
        else:
            expected = model.get(key)
            if expected is not None:
                model.move_to_end(key)
            assert cache.get(key) == expected
        assert len(cache) == len(model) <= capacity
    assert all(key in cache for key in model)
