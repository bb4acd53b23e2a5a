"""The namespace cache's store and fetcher, each alone: no server, no watch thread.

``tests/unit/namespace_cache/`` drives the whole cache against the fake API
server; here the store is written to directly, as the reflector and the
fetcher would, and the fetcher reads through a function the test holds
(``Reads``): each read takes the namespace as it is when the read starts and
answers only when the test lets it, as a GET that has read the object but
not replied yet. Nothing sleeps for a fixed time; waits poll with generous
deadlines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness.threads import PATIENCE, eventually, waiting_for_a_future
from tests.builders import namespace
from webhook.cluster.namespace_cache.fetcher import Fetcher
from webhook.cluster.namespace_cache.store import NamespaceStore, estimated_bytes
from webhook.cluster.namespace_cache.throttle import ThrottledLog
from webhook.contract.namespaces import NamespaceInfo, NamespaceUnavailable


def big(name: str, size: int) -> NamespaceInfo:
    """A namespace whose estimate is a little over ``size`` bytes."""
    return NamespaceInfo(name, {"padding": "x" * size})


ONE = estimated_bytes(namespace("team-00"))  # what one small namespace of these tests costs


# --- the store --------------------------------------------------------------------------


def test_the_store_answers_what_was_put_and_forgets_what_was_removed() -> None:
    store = NamespaceStore(max_bytes=100 * ONE)
    assert store.get("demo") is None
    demo = namespace("demo", {"sidecar-injection": "enabled"})
    assert store.put(demo)
    assert store.get("demo") is demo
    assert len(store) == 1
    store.remove("demo")
    assert store.get("demo") is None
    assert len(store) == 0


def test_the_byte_count_follows_puts_updates_and_removals_exactly() -> None:
    store = NamespaceStore(max_bytes=100 * ONE)
    small, grown, other = (
        namespace("a"),
        namespace("a", {"team": "payments", "tier": "gold"}),
        namespace("b"),
    )
    store.put(small)
    store.put(other)
    assert store.bytes == estimated_bytes(small) + estimated_bytes(other)
    store.put(grown)  # an update replaces the old copy's cost, it does not add to it
    assert store.bytes == estimated_bytes(grown) + estimated_bytes(other)
    store.remove("a")
    store.remove("b")
    assert store.bytes == 0


def test_a_namespace_over_the_entry_bound_is_never_stored() -> None:
    store = NamespaceStore(max_bytes=100 * ONE, max_entry_bytes=2 * ONE)
    huge = big("huge", 2 * ONE)
    assert not store.fits(huge)
    assert not store.put(huge)
    assert not store.put_fetched(huge, removals=store.removals)
    assert store.get("huge") is None
    assert store.bytes == 0


def test_a_full_store_refuses_a_new_namespace_and_lets_a_grown_one_go() -> None:
    store = NamespaceStore(max_bytes=3 * ONE)
    for number in range(3):
        assert store.put(namespace(f"team-{number:02d}"))
    assert not store.put(namespace("team-03"))
    assert store.get("team-03") is None
    assert store.bytes <= store.max_bytes
    removals = store.removals
    # A namespace that grows past the budget leaves rather than stay as it was:
    # its old copy would be read as current.
    assert not store.put(big("team-00", ONE))
    assert store.get("team-00") is None
    assert store.removals == removals + 1
    assert store.bytes <= store.max_bytes


def test_a_listing_keeps_what_fits_and_counts_what_it_left_out() -> None:
    store = NamespaceStore(max_bytes=3 * ONE)
    listing = store.listing()
    added = [listing.add(namespace(f"team-{number:02d}")) for number in range(5)]
    assert added == [True, True, True, False, False]
    assert (listing.left_out, listing.first_left_out) == (2, "team-03")
    assert len(store) == 0  # nothing is visible before the swap


def test_replace_swaps_the_whole_contents_in_and_counts_as_a_removal() -> None:
    store = NamespaceStore(max_bytes=100 * ONE)
    store.put(namespace("deleted-while-away"))
    store.put(namespace("kept", {"old": "yes"}))
    removals = store.removals
    listing = store.listing()
    listing.add(namespace("kept", {"old": "no"}))
    listing.add(namespace("new"))
    store.replace(listing)
    assert store.get("deleted-while-away") is None
    assert store.get("kept") == namespace("kept", {"old": "no"})
    assert store.get("new") is not None
    assert store.bytes == listing.bytes
    assert store.removals == removals + 1


def test_a_removal_counts_even_for_a_name_that_is_not_stored() -> None:
    # A fetch of that name may be in flight, and must not bring it back.
    store = NamespaceStore(max_bytes=100 * ONE)
    removals = store.removals
    store.remove("never-seen")
    assert store.removals == removals + 1


@pytest.mark.parametrize("removal", ["the same name", "another name", "a relist"])
def test_a_fetched_namespace_is_stored_only_if_nothing_was_removed_since_its_get(
    removal: str,
) -> None:
    store = NamespaceStore(max_bytes=100 * ONE)
    store.put(namespace("other"))
    before = store.removals  # read before the GET is sent
    if removal == "the same name":
        store.remove("late")
    elif removal == "another name":
        store.remove("other")
    else:
        store.replace(store.listing())
    assert not store.put_fetched(namespace("late"), removals=before)
    assert store.get("late") is None
    # Without a removal in between, the same answer fills the gap.
    assert store.put_fetched(namespace("late"), removals=store.removals)
    assert store.get("late") == namespace("late")


def test_a_fetched_namespace_never_replaces_the_copy_the_watch_holds() -> None:
    store = NamespaceStore(max_bytes=100 * ONE)
    before = store.removals
    from_the_watch = namespace("demo", {"sidecar-injection": "enabled"})
    store.put(from_the_watch)
    assert not store.put_fetched(namespace("demo"), removals=before)
    assert store.get("demo") is from_the_watch


def test_a_fetched_namespace_is_not_stored_past_the_budget() -> None:
    store = NamespaceStore(max_bytes=2 * ONE)
    store.put(namespace("team-00"))
    store.put(namespace("team-01"))
    assert not store.put_fetched(namespace("team-02"), removals=store.removals)
    assert store.get("team-02") is None


def test_reading_the_store_takes_no_lock_while_a_writer_holds_it() -> None:
    store = NamespaceStore(max_bytes=100 * ONE)
    store.put(namespace("demo"))
    answers: list[NamespaceInfo | None] = []
    with store._lock:  # a writer in the middle of a write
        reader = threading.Thread(target=lambda: answers.append(store.get("demo")))
        reader.start()
        reader.join(PATIENCE)
        assert not reader.is_alive()
    assert answers == [namespace("demo")]


def test_synced_at_is_when_the_writer_last_said_the_store_was_current() -> None:
    store = NamespaceStore(max_bytes=100 * ONE)
    assert store.synced_at is None
    store.mark_synced(1000.0)
    store.put(namespace("demo"))  # a write alone says nothing about being in sync
    assert store.synced_at == 1000.0
    store.mark_synced(1042.5)
    assert store.synced_at == 1042.5


# --- the fetcher ------------------------------------------------------------------------


class Reads:
    """The fetcher's read function, held by the test.

    Each call takes the namespace as it is when the read starts (as a GET
    reads the object), then waits for ``release()`` before it answers, unless
    ``hold`` is off.
    """

    def __init__(self, *namespaces: NamespaceInfo) -> None:
        self.namespaces = {info.name: info for info in namespaces}
        self.hold = True
        self.error: Exception | None = None
        self.calls: list[str] = []
        self._gates: list[threading.Event] = []
        self._lock = threading.Lock()

    def __call__(self, name: str) -> NamespaceInfo | None:
        gate = threading.Event()
        with self._lock:
            info = self.namespaces.get(name)
            self.calls.append(name)
            self._gates.append(gate)
        if self.hold and not gate.wait(PATIENCE):
            raise NamespaceUnavailable(f"namespace {name}: the test never answered")
        if self.error is not None:
            raise self.error
        return info

    def release(self) -> None:
        """Let every read made so far answer."""
        with self._lock:
            gates = list(self._gates)
        for gate in gates:
            gate.set()


@pytest.fixture
def store() -> NamespaceStore:
    return NamespaceStore(max_bytes=100 * ONE)


@pytest.fixture
def reads() -> Iterator[Reads]:
    held = Reads(namespace("demo", {"sidecar-injection": "enabled"}))
    yield held
    held.hold = False
    held.release()


@pytest.fixture
def make_fetcher(reads: Reads, store: NamespaceStore) -> Iterator[Any]:
    made: list[Fetcher] = []

    def make(*, timeout: float = PATIENCE, threads: int = 4, max_in_flight: int = 64) -> Fetcher:
        fetcher = Fetcher(
            reads,
            store,
            timeout=timeout,
            threads=threads,
            max_in_flight=max_in_flight,
            notes=ThrottledLog(60.0, time.monotonic),
        )
        made.append(fetcher)
        return fetcher

    yield make
    reads.hold = False
    reads.release()
    for fetcher in made:
        fetcher.stop()


Outcome = NamespaceInfo | None | NamespaceUnavailable


def fetch_in_threads(
    fetcher: Fetcher, name: str, count: int
) -> tuple[list[threading.Thread], list[Outcome]]:
    outcomes: list[Outcome] = []

    def fetch() -> None:
        try:
            outcomes.append(fetcher.fetch(name))
        except NamespaceUnavailable as err:
            outcomes.append(err)

    threads = [threading.Thread(target=fetch, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, outcomes


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(PATIENCE)
        assert not thread.is_alive()


def test_a_fetch_answers_what_was_read_and_fills_the_store(
    make_fetcher: Any, reads: Reads, store: NamespaceStore
) -> None:
    reads.hold = False
    fetcher = make_fetcher()
    assert fetcher.fetch("demo") == reads.namespaces["demo"]
    assert store.get("demo") == reads.namespaces["demo"]
    assert fetcher.fetch("nowhere") is None  # no such namespace: nothing stored
    assert store.get("nowhere") is None
    # Each fetch reads anew once the last read of that name ended: the answer
    # is never older than the call.
    fetcher.fetch("demo")
    assert reads.calls == ["demo", "nowhere", "demo"]


def test_a_name_no_namespace_can_have_is_none_without_a_read(
    make_fetcher: Any, reads: Reads
) -> None:
    fetcher = make_fetcher()
    for name in ("Upper", "a/b", "../secrets", "x" * 64, ""):
        assert fetcher.fetch(name) is None
    assert reads.calls == []


def test_callers_arriving_while_a_read_is_under_way_share_the_next_one(
    make_fetcher: Any, reads: Reads
) -> None:
    fetcher = make_fetcher()
    reads.namespaces["late"] = namespace("late")
    first, first_outcomes = fetch_in_threads(fetcher, "late", 1)
    eventually(lambda: reads.calls == ["late"], what="the first read to start")
    # The label lands now: callers from here on must see it.
    reads.namespaces["late"] = namespace("late", {"sidecar-injection": "enabled"})
    later, later_outcomes = fetch_in_threads(fetcher, "late", 5)
    eventually(lambda: all(map(waiting_for_a_future, later)), what="every later caller to wait")
    assert reads.calls == ["late"]  # single flight: nothing more sent yet
    reads.release()
    eventually(lambda: len(reads.calls) == 2, what="the one read queued for the later callers")
    reads.release()
    join(first + later)
    assert first_outcomes == [namespace("late")]
    assert later_outcomes == [namespace("late", {"sidecar-injection": "enabled"})] * 5
    assert reads.calls == ["late", "late"]


def test_callers_of_a_read_not_started_yet_share_it(make_fetcher: Any, reads: Reads) -> None:
    fetcher = make_fetcher(threads=1)
    busy, _ = fetch_in_threads(fetcher, "demo", 1)
    eventually(lambda: reads.calls == ["demo"], what="the only fetch thread to be busy")
    reads.namespaces["queued"] = namespace("queued")
    waiting, outcomes = fetch_in_threads(fetcher, "queued", 4)
    eventually(lambda: all(map(waiting_for_a_future, waiting)), what="every caller to wait")
    reads.hold = False
    reads.release()
    join(busy + waiting)
    assert outcomes == [namespace("queued")] * 4
    assert reads.calls == ["demo", "queued"]


def test_reads_of_too_many_distinct_namespaces_are_refused_not_queued(
    make_fetcher: Any, reads: Reads
) -> None:
    fetcher = make_fetcher(max_in_flight=2)
    slow, _ = fetch_in_threads(fetcher, "slow-0", 1)
    slower, _ = fetch_in_threads(fetcher, "slow-1", 1)
    eventually(lambda: len(reads.calls) == 2, what="two reads in flight")
    with pytest.raises(NamespaceUnavailable, match="2 other namespaces are being read"):
        fetcher.fetch("one-more")
    # A name already in flight is no new namespace: its caller waits in line.
    again, outcomes = fetch_in_threads(fetcher, "slow-0", 1)
    eventually(lambda: all(map(waiting_for_a_future, again)), what="the caller to wait")
    reads.hold = False
    reads.release()
    join(slow + slower + again)
    assert outcomes == [None]
    assert "one-more" not in reads.calls


@pytest.mark.parametrize("removed_by", ["a DELETED event", "a relist"])
def test_a_namespace_removed_while_it_is_read_is_answered_but_not_stored(
    make_fetcher: Any, reads: Reads, store: NamespaceStore, removed_by: str
) -> None:
    fetcher = make_fetcher()
    reads.namespaces["doomed"] = namespace("doomed")
    threads, outcomes = fetch_in_threads(fetcher, "doomed", 1)
    eventually(lambda: reads.calls == ["doomed"], what="the read to have taken the namespace")
    if removed_by == "a DELETED event":
        store.remove("doomed")
    else:
        store.replace(store.listing())
    reads.release()
    join(threads)
    assert outcomes == [namespace("doomed")]  # what it read
    assert store.get("doomed") is None  # but the watch said it is gone


def test_a_read_does_not_replace_the_copy_the_watch_stored_meanwhile(
    make_fetcher: Any, reads: Reads, store: NamespaceStore
) -> None:
    fetcher = make_fetcher()
    threads, _ = fetch_in_threads(fetcher, "demo", 1)
    eventually(lambda: reads.calls == ["demo"], what="the read to start")
    from_the_watch = namespace("demo", {"sidecar-injection": "disabled"})
    store.put(from_the_watch)
    reads.release()
    join(threads)
    assert store.get("demo") is from_the_watch


def test_a_caller_waits_no_longer_than_its_timeout(make_fetcher: Any, reads: Reads) -> None:
    fetcher = make_fetcher(timeout=0.05)
    with pytest.raises(NamespaceUnavailable, match=r"^namespace demo: no answer .* within 0\.05s"):
        fetcher.fetch("demo")
    assert reads.calls == ["demo"]  # the read is still held: the caller did not wait for it


def test_stop_releases_waiting_callers_and_fails_later_fetches(
    make_fetcher: Any, reads: Reads
) -> None:
    fetcher = make_fetcher(threads=1)
    busy, busy_outcomes = fetch_in_threads(fetcher, "demo", 1)
    eventually(lambda: reads.calls == ["demo"], what="the read to start")
    queued, queued_outcomes = fetch_in_threads(fetcher, "other", 1)  # no thread left for it
    eventually(lambda: all(map(waiting_for_a_future, busy + queued)), what="both callers to wait")
    fetcher.stop()
    join(busy + queued)  # released at once, the read still held
    for outcome in busy_outcomes + queued_outcomes:
        assert isinstance(outcome, NamespaceUnavailable)
        assert "the namespace source is stopped" in str(outcome)
    with pytest.raises(NamespaceUnavailable, match="stopped"):
        fetcher.fetch("later")
    assert reads.calls == ["demo"]  # the queued read was dropped, never sent


def test_a_failed_read_reaches_every_caller_as_an_exception_of_its_own(
    make_fetcher: Any, reads: Reads
) -> None:
    fetcher = make_fetcher(threads=1)
    busy, _ = fetch_in_threads(fetcher, "demo", 1)
    eventually(lambda: reads.calls == ["demo"], what="the only fetch thread to be busy")
    reads.error = NamespaceUnavailable("namespace shared: HTTP 503")
    threads, outcomes = fetch_in_threads(fetcher, "shared", 3)
    eventually(lambda: all(map(waiting_for_a_future, threads)), what="every caller to wait")
    reads.hold = False
    reads.release()
    join(busy + threads)
    assert [str(outcome) for outcome in outcomes] == ["namespace shared: HTTP 503"] * 3
    assert len({id(outcome) for outcome in outcomes}) == 3  # raised in three threads
    assert reads.calls == ["demo", "shared"]


def test_a_bug_in_a_read_is_logged_and_still_fails_closed(
    make_fetcher: Any, reads: Reads, caplog: pytest.LogCaptureFixture
) -> None:
    reads.hold = False
    reads.error = KeyError("oops")
    fetcher = make_fetcher()
    with pytest.raises(NamespaceUnavailable, match=r"^namespace demo: KeyError: 'oops'$"):
        fetcher.fetch("demo")
    [record] = [r for r in caplog.records if r.name == "webhook.namespaces"]
    assert record.levelno == logging.WARNING
    assert record.exc_info is not None
