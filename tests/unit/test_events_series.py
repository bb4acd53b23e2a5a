"""The series table: equal occurrences become one Event and its count, in bounded space.

Driven with explicit times (``mono`` for the windows, ``wall`` for what the
Event says), as the recorder drives it under its lock.
"""

from __future__ import annotations

import pytest

from webhook.service.events.model import Occurrence, Owner
from webhook.service.events.series import Done, Observed, SeriesTable, Write

WINDOW = 360.0
FLUSH = 10.0


def _owner(name: str = "web-7d9f") -> Owner:
    return Owner("apps/v1", "ReplicaSet", name, "shop", "uid-1")


def _injected(name: str = "web-7d9f", note: str = "injected") -> Occurrence:
    return Occurrence(_owner(name), "Injected", "Normal", note)


def _table(max_series: int = 8) -> SeriesTable:
    return SeriesTable(max_series=max_series, window=WINDOW, flush=FLUSH, instance="replica-a")


def _take(table: SeriesTable, mono: float, *, final: bool = False) -> Write:
    write = table.take(mono=mono, wall_ns=int(1_700_000_000e9 + mono * 1e9), final=final)
    assert write is not None
    return write


def test_the_first_occurrence_is_a_create_due_at_once() -> None:
    table = _table()
    assert table.observe(_injected(), mono=0.0, wall=1000.0) == (Observed.NEW, True)
    assert table.due_in(0.0) == 0.0
    write = _take(table, 0.0)
    assert write.kind == "create"
    assert write.count == 1
    assert write.body["metadata"]["name"] == write.name
    assert write.body["reportingInstance"] == "replica-a"
    assert "series" not in write.body
    assert table.due_in(0.0) is None  # in flight: nothing else to do


def test_a_thousand_pods_of_one_replicaset_make_one_create_and_a_few_series_patches() -> None:
    table = _table()
    writes: list[Write] = []
    mono = 0.0
    for _ in range(1000):
        table.observe(_injected(), mono=mono, wall=1000.0 + mono)
        if table.due_in(mono) == 0.0:
            write = _take(table, mono)
            writes.append(write)
            table.done(write, ok=True, mono=mono)
        mono += 0.05  # 50 s of pods, 20 a second
    while (due := table.due_in(mono)) is not None:
        mono += due
        write = _take(table, mono)
        writes.append(write)
        table.done(write, ok=True, mono=mono)

    assert [w.kind for w in writes].count("create") == 1
    patches = [w for w in writes if w.kind == "patch"]
    assert 1 <= len(patches) <= 50 / FLUSH + 2
    assert all(w.name == writes[0].name for w in writes)
    assert patches[-1].body["series"]["count"] == 1000
    assert table.unsent == 0


def test_a_repeat_while_the_create_is_in_flight_is_patched_after_the_flush_interval() -> None:
    table = _table()
    table.observe(_injected(), mono=0.0, wall=1000.0)
    create = _take(table, 0.0)
    assert table.observe(_injected(), mono=1.0, wall=1001.0) == (Observed.REPEAT, False)
    assert table.done(create, ok=True, mono=2.0).sent == 1
    assert table.due_in(2.0) == pytest.approx(FLUSH)
    assert table.take(mono=5.0, wall_ns=0) is None
    patch = _take(table, 12.0)
    assert patch.kind == "patch"
    assert patch.body == {"series": {"count": 2, "lastObservedTime": "1970-01-01T00:16:41.000000Z"}}
    assert table.done(patch, ok=True, mono=12.0).sent == 1


def test_a_repeat_after_everything_was_written_wakes_the_sender_once() -> None:
    table = _table()
    table.observe(_injected(), mono=0.0, wall=0.0)
    table.done(_take(table, 0.0), ok=True, mono=0.0)
    assert table.observe(_injected(), mono=1.0, wall=1.0) == (Observed.REPEAT, True)
    assert table.observe(_injected(), mono=2.0, wall=2.0) == (Observed.REPEAT, False)


def test_a_create_carries_the_count_of_repeats_that_came_before_it_was_sent() -> None:
    table = _table()
    for second in range(5):
        table.observe(_injected(), mono=float(second), wall=100.0 + second)
    write = _take(table, 5.0)
    assert write.kind == "create"
    assert write.body["series"]["count"] == 5
    assert write.body["eventTime"] == "1970-01-01T00:01:40.000000Z"
    assert write.body["series"]["lastObservedTime"] == "1970-01-01T00:01:44.000000Z"


def test_after_the_window_without_a_repeat_the_next_occurrence_is_a_new_event() -> None:
    table = _table()
    table.observe(_injected(), mono=0.0, wall=0.0)
    first = _take(table, 0.0)
    table.done(first, ok=True, mono=0.0)
    assert table.observe(_injected(), mono=WINDOW - 1, wall=0.0)[0] is Observed.REPEAT
    table.done(_take(table, WINDOW), ok=True, mono=WINDOW)
    assert table.observe(_injected(), mono=2 * WINDOW, wall=0.0) == (Observed.NEW, True)
    second = _take(table, 2 * WINDOW)
    assert second.kind == "create"
    assert second.name != first.name


def test_different_notes_owners_or_reasons_are_different_series() -> None:
    table = _table()
    assert table.observe(_injected(), mono=0.0, wall=0.0)[0] is Observed.NEW
    assert table.observe(_injected(note="other"), mono=0.0, wall=0.0)[0] is Observed.NEW
    assert table.observe(_injected(name="db-1"), mono=0.0, wall=0.0)[0] is Observed.NEW
    refused = Occurrence(_owner(), "InjectionRefused", "Warning", "injected")
    assert table.observe(refused, mono=0.0, wall=0.0)[0] is Observed.NEW
    assert len(table) == 4


def test_creates_go_first_oldest_first() -> None:
    table = _table()
    table.observe(_injected("a"), mono=0.0, wall=0.0)
    table.done(_take(table, 0.0), ok=True, mono=0.0)
    table.observe(_injected("a"), mono=1.0, wall=1.0)  # a patch, due at 10
    table.observe(_injected("b"), mono=2.0, wall=2.0)
    table.observe(_injected("c"), mono=3.0, wall=3.0)
    names = [_take(table, 20.0).series.occurrence.owner.name for _ in range(3)]
    assert names == ["b", "c", "a"]


def test_event_names_never_repeat_even_within_one_nanosecond() -> None:
    table = _table()
    names = set()
    for index in range(5):
        table.observe(_injected(f"same-{index}"), mono=0.0, wall=0.0)
    for _ in range(5):
        write = table.take(mono=0.0, wall_ns=42)
        assert write is not None
        names.add(write.name.rsplit(".", 1)[1])
    assert len(names) == 5


# --- bounded ------------------------------------------------------------------------------


def test_when_every_series_waits_for_a_write_a_new_one_is_dropped_repeats_still_count() -> None:
    table = _table(max_series=3)
    for name in ("a", "b", "c"):
        table.observe(_injected(name), mono=0.0, wall=0.0)
    assert table.observe(_injected("d"), mono=0.0, wall=0.0) == (Observed.DROPPED, False)
    assert table.observe(_injected("a"), mono=0.0, wall=0.0)[0] is Observed.REPEAT
    assert len(table) == 3
    assert table.unsent == 4


def test_a_full_table_forgets_the_series_idle_longest_to_make_room() -> None:
    table = _table(max_series=2)
    for name in ("a", "b"):
        table.observe(_injected(name), mono=0.0, wall=0.0)
        table.done(_take(table, 0.0), ok=True, mono=0.0)
    assert table.observe(_injected("c"), mono=1.0, wall=1.0)[0] is Observed.NEW
    # "a" was forgotten: its next occurrence starts a new Event, making room again.
    assert table.observe(_injected("a"), mono=2.0, wall=2.0)[0] is Observed.NEW
    assert table.observe(_injected("d"), mono=2.0, wall=2.0)[0] is Observed.DROPPED


def test_ended_series_are_swept_away() -> None:
    table = _table()
    table.observe(_injected("old"), mono=0.0, wall=0.0)
    table.done(_take(table, 0.0), ok=True, mono=0.0)
    table.observe(_injected("new"), mono=WINDOW, wall=0.0)
    table.done(_take(table, WINDOW), ok=True, mono=WINDOW)
    table.observe(_injected("waiting"), mono=0.0, wall=0.0)  # never written: not swept
    assert table.sweep(WINDOW + 1) == 1
    assert len(table) == 2


# --- failures ---------------------------------------------------------------------------


def test_a_failed_write_ends_the_series_and_counts_its_occurrences_failed() -> None:
    table = _table()
    table.observe(_injected(), mono=0.0, wall=0.0)
    write = _take(table, 0.0)
    table.observe(_injected(), mono=0.5, wall=0.5)  # came while the write was in flight
    assert table.done(write, ok=False, mono=1.0).failed == 2
    assert len(table) == 0
    assert table.unsent == 0
    assert table.observe(_injected(), mono=2.0, wall=2.0)[0] is Observed.NEW


def test_a_patch_of_an_event_that_expired_becomes_a_create_with_the_whole_count() -> None:
    table = _table()
    table.observe(_injected(), mono=0.0, wall=0.0)
    table.done(_take(table, 0.0), ok=True, mono=0.0)
    for second in range(1, 4):
        table.observe(_injected(), mono=float(second), wall=float(second))
    patch = _take(table, FLUSH)
    assert patch.kind == "patch"
    assert table.done(patch, ok=False, not_found=True, mono=FLUSH) == Done()
    again = _take(table, FLUSH)
    assert again.kind == "create"
    assert again.count == 4
    assert again.body["series"]["count"] == 4
    assert table.done(again, ok=True, mono=FLUSH).sent == 3  # the first was sent before
    assert table.unsent == 0


def test_drop_all_counts_what_was_never_written_by_reason() -> None:
    table = _table()
    table.observe(_injected("a"), mono=0.0, wall=0.0)
    table.done(_take(table, 0.0), ok=True, mono=0.0)
    table.observe(_injected("a"), mono=1.0, wall=1.0)
    refused = Occurrence(_owner("b"), "InjectionRefused", "Warning", "no")
    table.observe(refused, mono=1.0, wall=1.0)
    table.observe(refused, mono=1.0, wall=1.0)
    in_flight = _take(table, 1.0)
    assert table.drop_all() == {"Injected": 1, "InjectionRefused": 2}
    assert len(table) == 0
    assert table.unsent == 0
    # The write that was in flight comes back after the drop: already counted.
    assert table.done(in_flight, ok=True, mono=2.0).sent == 0


def test_when_stopping_every_pending_series_count_is_due_at_once() -> None:
    table = _table()
    table.observe(_injected(), mono=0.0, wall=0.0)
    table.done(_take(table, 0.0), ok=True, mono=0.0)
    table.observe(_injected(), mono=1.0, wall=1.0)
    assert table.due_in(1.0) == pytest.approx(FLUSH - 1.0)
    assert table.due_in(1.0, final=True) == 0.0
    assert _take(table, 1.0, final=True).kind == "patch"
