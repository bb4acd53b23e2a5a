"""When the server gives memory back: the heap trimmer alone, on a fake clock.

``webhook.service.heap.HeapTrimmer`` collects and trims the C heap once
enough connections have closed, at most so often, and after a quiet spell
for a few; what that does for a real ``serve`` under connection churn is
``tests/process/test_fair_memory.py``.
"""

from __future__ import annotations

from webhook.service.heap import (
    QUIET_TRIM_SECONDS,
    TRIM_AFTER_CLOSED,
    TRIM_INTERVAL_SECONDS,
    TRIM_SPACING,
    HeapTrimmer,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trimmer(closed: list[int], clock: Clock, calls: list[str]) -> HeapTrimmer:
    def collect() -> int:
        calls.append("collect")
        return 0

    def trim(_pad: int) -> int:
        calls.append("trim")
        return 1

    return HeapTrimmer(lambda: closed[0], clock=clock, collect=collect, trim=trim)


def test_the_trimmer_collects_then_trims_after_enough_closed_connections_a_second_apart() -> None:
    closed, clock, calls = [0], Clock(), []
    heap = trimmer(closed, clock, calls)
    assert not heap.maybe_trim()  # nothing closed
    closed[0] = TRIM_AFTER_CLOSED
    assert heap.maybe_trim()
    assert calls == ["collect", "trim"]
    closed[0] += TRIM_AFTER_CLOSED
    clock.now += TRIM_INTERVAL_SECONDS / 2
    assert not heap.maybe_trim()  # too soon
    clock.now += TRIM_INTERVAL_SECONDS / 2
    assert heap.maybe_trim()
    assert heap.trims == 2


def test_a_few_closed_connections_are_trimmed_after_a_quiet_spell() -> None:
    closed, clock, calls = [0], Clock(), []
    heap = trimmer(closed, clock, calls)
    closed[0] = TRIM_AFTER_CLOSED
    assert heap.maybe_trim()
    closed[0] += 3
    clock.now += TRIM_INTERVAL_SECONDS
    assert not heap.maybe_trim()
    clock.now += QUIET_TRIM_SECONDS
    assert heap.maybe_trim()


def test_a_slow_trim_spaces_the_next_one_further_apart() -> None:
    closed, clock = [0], Clock()

    def slow_collect() -> int:
        clock.now += 0.1  # a collection of 100 ms
        return 0

    heap = HeapTrimmer(lambda: closed[0], clock=clock, collect=slow_collect, trim=None)
    closed[0] = TRIM_AFTER_CLOSED
    assert heap.maybe_trim()
    closed[0] += TRIM_AFTER_CLOSED
    clock.now += TRIM_SPACING * 0.1 - 0.01
    assert not heap.maybe_trim()
    clock.now += 0.02
    assert heap.maybe_trim()
