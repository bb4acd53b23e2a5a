"""The settings cache: bounded in entries and bytes, and its charge true to what an entry holds."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import pytest

from tests.unit.test_settings import P, resolve
from webhook.engine.bounded_cache import BoundedCache
from webhook.engine.settings import SETTINGS_CACHE
from webhook.engine.values import MAX_CIDRS


def worst_cidr(i: int, j: int) -> str:
    """A distinct IPv6 /128 of the longest canonical spelling (43 characters)."""
    return f"{0x1000 + i:x}:{0x1000 + j:x}:2222:3333:4444:5555:6666:7777/128"


def test_distinct_big_settings_do_not_stay_forever() -> None:
    SETTINGS_CACHE.clear()
    before = SETTINGS_CACHE.bytes
    for i in range(300):
        cidrs = ",".join(worst_cidr(i, j) for j in range(MAX_CIDRS))
        resolve(pod={P + "exclude-outbound-cidrs": cidrs, P + "include-outbound-cidrs": cidrs})
        assert SETTINGS_CACHE.bytes <= SETTINGS_CACHE.max_bytes
    assert before == 0
    assert SETTINGS_CACHE.entries < 300  # the byte bound evicted, not the entry bound
    assert SETTINGS_CACHE.entries < SETTINGS_CACHE.max_entries
    SETTINGS_CACHE.clear()


def typical(i: int) -> dict[str, str]:
    return {P + "log-level": "info", P + "exclude-inbound-ports": str(1000 + i)}


def worst(i: int) -> dict[str, str]:
    return {
        P + key: ",".join(worst_cidr(i, j + offset) for j in range(MAX_CIDRS))
        for key, offset in (("exclude-outbound-cidrs", 0), ("include-outbound-cidrs", 200))
    }


@pytest.mark.parametrize("annotations", [typical, worst])
def test_the_cache_charge_covers_what_an_entry_really_holds(
    annotations: Callable[[int], dict[str, str]],
) -> None:
    # The byte bound is only as good as the charge per entry: measure what 50
    # entries really keep alive and compare with what they were charged.
    SETTINGS_CACHE.clear()
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for i in range(50):
            resolve(pod=annotations(i))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert SETTINGS_CACHE.entries == 50
    assert held <= SETTINGS_CACHE.bytes
    SETTINGS_CACHE.clear()


def test_bounded_cache_evicts_least_recently_used_by_entries_and_bytes() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_entries=3, max_bytes=100)
    for key in "abc":
        cache.put(key, ord(key), size=10)
    assert cache.get("a") == ord("a")  # now the most recent
    cache.put("d", 1, size=10)  # over 3 entries: the least recent, b, goes
    assert cache.get("b") is None
    assert cache.entries == 3
    cache.put("e", 2, size=85)  # over 100 bytes: c, then a, go
    assert (cache.get("c"), cache.get("a"), cache.get("d"), cache.get("e")) == (None, None, 1, 2)
    assert cache.bytes == 95
    cache.put("huge", 3, size=101)  # larger than the whole budget: not kept
    assert cache.get("huge") is None
    assert cache.bytes == 95
    cache.put("d", 4, size=5)  # replacing an entry re-charges it
    assert cache.bytes == 90
