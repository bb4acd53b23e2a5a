"""Waiting for the watch, remembering absences, bounding reads per client: each part alone.

The store's two sets of names (uncached, absent) and ``Arrivals`` are driven
directly; the whole cache against the fake API server (real list, watch and
GETs, the cache's clock a fake one); the service's adapter
(``SourceLookup``) over a scripted source whose reads block until the test
lets them answer. Nothing sleeps for a fixed time.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from kubernetes import client

from harness.fake_kube_api import FakeKubeAPI
from harness.threads import PATIENCE, eventually
from tests.builders import namespace
from webhook.cluster.namespace_cache import KubeNamespaceCache, NamespaceCacheOptions
from webhook.cluster.namespace_cache.arrivals import Arrivals
from webhook.cluster.namespace_cache.options import MAX_ABSENT_NAMES, MAX_UNCACHED_NAMES
from webhook.cluster.namespace_cache.store import NamespaceStore, estimated_bytes
from webhook.cluster.namespaces_file import StaticNamespaces
from webhook.contract.namespaces import NamespaceInfo, NamespaceUnavailable, WatchedSource
from webhook.service.metrics import Metrics
from webhook.service.namespace_lookup import SourceLookup

ENABLED = {"sidecar-injection": "enabled"}


# --- the store: uncached and absent names ------------------------------------------------


def test_a_namespace_too_large_to_store_is_known_to_exist() -> None:
    store = NamespaceStore(max_bytes=1 << 20, max_entry_bytes=2000)
    huge = namespace("huge", {"padding": "x" * 5000})
    assert not store.put(huge)
    assert store.get("huge") is None
    assert store.uncached("huge")
    store.put(namespace("huge"))  # trimmed down: stored again
    assert not store.uncached("huge")
    store.put_uncached("huge")  # too large once more, as the watch saw it
    assert store.get("huge") is None
    assert store.uncached("huge")
    store.remove("huge")
    assert not store.uncached("huge")


def test_a_listing_notes_what_it_leaves_out_and_the_relist_replaces_both_sets() -> None:
    store = NamespaceStore(max_bytes=3 * estimated_bytes(namespace("team-00")))
    store.put_uncached("older")
    listing = store.listing()
    for index in range(5):
        listing.add(namespace(f"team-{index:02d}"))
    listing.skip("oversized")
    store.replace(listing)
    assert [store.uncached(f"team-{i:02d}") for i in range(5)] == [False] * 3 + [True] * 2
    assert store.uncached("oversized")
    assert not store.uncached("older")


def test_an_absence_is_remembered_for_its_time_and_not_over_what_the_watch_delivered() -> None:
    store = NamespaceStore(max_bytes=1 << 20)
    assert store.put_absent("gone", now=100.0, seconds=10.0)
    assert store.absent("gone", 105.0)
    assert not store.absent("gone", 110.0)
    # The watch delivered it before the GET's answer was noted: not absent.
    store.put(namespace("here"))
    assert not store.put_absent("here", now=100.0, seconds=10.0)
    store.put_uncached("big")
    assert not store.put_absent("big", now=100.0, seconds=10.0)


@pytest.mark.parametrize(
    "delivered",
    [
        pytest.param(lambda s: s.put(namespace("soon")), id="watch-event"),
        pytest.param(lambda s: s.put_uncached("soon"), id="watch-event-too-large"),
        pytest.param(
            lambda s: s.put_fetched(namespace("soon"), removals=s.removals), id="a-later-get"
        ),
        pytest.param(lambda s: s.replace(s.listing()), id="relist"),
        pytest.param(lambda s: s.forget_absent(), id="watch-stopped"),
    ],
)
def test_an_absence_is_forgotten_the_moment_anything_says_otherwise(
    delivered: Callable[[NamespaceStore], Any],
) -> None:
    store = NamespaceStore(max_bytes=1 << 20)
    store.put_absent("soon", now=100.0, seconds=10.0)
    delivered(store)
    assert not store.absent("soon", 101.0)


def test_both_sets_of_names_are_bounded_oldest_out_first() -> None:
    store = NamespaceStore(max_bytes=1 << 20)
    for index in range(MAX_ABSENT_NAMES + 10):
        store.put_absent(f"gone-{index}", now=100.0, seconds=10.0)
    assert not store.absent("gone-0", 101.0)
    assert store.absent(f"gone-{MAX_ABSENT_NAMES + 9}", 101.0)
    for index in range(MAX_UNCACHED_NAMES + 10):
        store.put_uncached(f"big-{index}")
    assert not store.uncached("big-0")
    assert store.uncached(f"big-{MAX_UNCACHED_NAMES + 9}")


# --- Arrivals -------------------------------------------------------------------------------


def test_waiters_are_woken_by_their_name_and_only_while_the_watch_is_live() -> None:
    arrivals = Arrivals(max_waiters=10)
    woken: list[str] = []
    assert arrivals.wait("a", lambda: woken.append("a")) is None  # not live: read instead
    arrivals.set_live(True)
    cancel_a = arrivals.wait("a", lambda: woken.append("a"))
    arrivals.wait("b", lambda: woken.append("b"))
    assert cancel_a is not None
    assert arrivals.waiting == 2
    arrivals.arrived("c")
    arrivals.arrived("a")
    assert woken == ["a"]
    cancel_a()  # after waking: nothing to undo
    assert arrivals.waiting == 1
    arrivals.set_live(True)  # a renewed watch: still live, nobody woken
    assert woken == ["a"]
    arrivals.set_live(False)  # nothing more will come: everyone goes on
    assert woken == ["a", "b"]
    assert arrivals.waiting == 0


def test_a_cancelled_waiter_is_not_woken_and_the_bound_turns_the_next_away() -> None:
    arrivals = Arrivals(max_waiters=2)
    arrivals.set_live(True)
    woken: list[int] = []
    first = arrivals.wait("a", lambda: woken.append(1))
    arrivals.wait("a", lambda: woken.append(2))
    assert arrivals.wait("a", lambda: woken.append(3)) is None
    assert first is not None
    first()
    arrivals.arrived("a")
    assert woken == [2]


def test_a_waiter_that_raises_does_not_stop_the_others() -> None:
    arrivals = Arrivals(max_waiters=10)
    arrivals.set_live(True)
    woken: list[str] = []

    def broken() -> None:
        raise RuntimeError("a bug in a waiter")

    arrivals.wait("a", broken)
    arrivals.wait("a", lambda: woken.append("a"))
    arrivals.arrived("a")
    assert woken == ["a"]


# --- the whole cache against the fake API server --------------------------------------------

FAST = NamespaceCacheOptions(
    watch_timeout_seconds=30,
    list_timeout=2.0,
    fetch_timeout=2.0,
    connect_timeout=0.5,
    backoff_initial=0.02,
    backoff_max=0.1,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api(fake_api: FakeKubeAPI) -> FakeKubeAPI:
    fake_api.add("demo", ENABLED)
    return fake_api


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(api: FakeKubeAPI, clock: FakeClock) -> Iterator[KubeNamespaceCache]:
    made = KubeNamespaceCache(
        client.Configuration(host=api.url),
        FAST,
        clock=clock,
        rng=random.Random(7),  # noqa: S311 - the same jitter on every run
    )
    made.start()
    assert made.wait_ready(PATIENCE)
    yield made
    made.stop()


def live(cache: KubeNamespaceCache) -> bool:
    cancel = cache.on_arrival("probe", lambda: None)
    if cancel is None:
        return False
    cancel()
    return True


def test_the_cache_is_a_watched_source_live_once_its_watch_is_open(
    cache: KubeNamespaceCache, api: FakeKubeAPI
) -> None:
    assert isinstance(cache, WatchedSource)
    eventually(lambda: live(cache), what="a live watch")
    woken = threading.Event()
    cancel = cache.on_arrival("new-team", woken.set)
    assert cancel is not None
    api.add("new-team", ENABLED)
    assert woken.wait(PATIENCE)
    assert cache.cached("new-team") == namespace("new-team", ENABLED)


def test_a_broken_watch_wakes_every_waiter_and_forgets_absences(
    cache: KubeNamespaceCache, api: FakeKubeAPI
) -> None:
    eventually(lambda: live(cache), what="a live watch")
    assert cache.fetch("nowhere") is None  # a 404, remembered
    assert cache.known_absent("nowhere")
    woken = threading.Event()
    assert cache.on_arrival("never", woken.set) is not None
    api.stop()  # the watch breaks and cannot come back
    assert woken.wait(PATIENCE)
    assert not cache.known_absent("nowhere")
    assert cache.on_arrival("never", lambda: None) is None


def test_an_absence_lasts_its_time_and_ends_when_the_watch_delivers_the_namespace(
    cache: KubeNamespaceCache, api: FakeKubeAPI, clock: FakeClock
) -> None:
    eventually(lambda: live(cache), what="a live watch")
    assert cache.fetch("later") is None
    assert cache.known_absent("later")
    clock.now += FAST.absent_seconds
    assert not cache.known_absent("later")
    assert cache.fetch("later") is None
    assert cache.known_absent("later")
    api.add("later", ENABLED)
    eventually(lambda: cache.cached("later") is not None, what="the ADDED event")
    assert not cache.known_absent("later")


def test_a_namespace_too_large_to_cache_is_read_at_once_rather_than_awaited(
    api: FakeKubeAPI, clock: FakeClock
) -> None:
    api.add("huge", {f"label-{i:03d}": "v" * 60 for i in range(600)})
    made = KubeNamespaceCache(
        client.Configuration(host=api.url),
        FAST,
        clock=clock,
        rng=random.Random(7),  # noqa: S311
    )
    made.start()
    try:
        assert made.wait_ready(PATIENCE)
        eventually(lambda: live(made), what="a live watch")
        assert made.cached("huge") is None
        assert made.on_arrival("huge", lambda: None) is None
        assert made.on_arrival("unknown", lambda: None) is not None
    finally:
        made.stop()


# --- the service's adapter ------------------------------------------------------------------


class Watched(StaticNamespaces):
    """A scripted watched source: reads block until ``release``; the test delivers arrivals."""

    def __init__(self, *, live: bool = True) -> None:
        super().__init__({})
        self.live = live
        self.absent: set[str] = set()
        self.reads: list[str] = []
        self.release = threading.Event()
        self.waiters: dict[str, list[Callable[[], None]]] = {}
        self._known: dict[str, NamespaceInfo] = {}

    def cached(self, name: str) -> NamespaceInfo | None:
        return self._known.get(name)

    def fetch(self, name: str) -> NamespaceInfo | None:
        self.reads.append(name)
        if not self.release.wait(PATIENCE):
            raise NamespaceUnavailable(f"namespace {name}: no answer")
        return None

    def on_arrival(self, name: str, wake: Callable[[], None]) -> Callable[[], None] | None:
        if not self.live:
            return None
        self.waiters.setdefault(name, []).append(wake)
        return lambda: None

    def known_absent(self, name: str) -> bool:
        return name in self.absent

    def deliver(self, info: NamespaceInfo) -> None:
        self._known[info.name] = info
        for wake in self.waiters.pop(info.name, []):
            wake()


def samples(metrics: Metrics, name: str) -> dict[str, float]:
    found = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                found[",".join(sample.labels.values())] = sample.value
    return found


def test_an_unknown_namespace_is_awaited_on_the_watch_and_not_read() -> None:
    source, metrics = Watched(), Metrics()
    lookup = SourceLookup(source, metrics, arrival_wait=PATIENCE)

    async def run() -> None:
        async with anyio.create_task_group() as tasks:
            found: list[Any] = []

            async def ask() -> None:
                found.append(await lookup.fetch("new-team", reason="miss", client="10.0.0.1"))

            tasks.start_soon(ask)
            while not source.waiters:
                await anyio.sleep(0.01)
            # Delivered from another thread, as the watch does.
            threading.Thread(target=source.deliver, args=(namespace("new-team", ENABLED),)).start()
        assert found == [namespace("new-team", ENABLED)]

    anyio.run(run)
    assert source.reads == []
    assert samples(metrics, "sidecar_injector_namespace_waits_total") == {"arrived": 1.0}


def test_not_delivered_in_time_a_remembered_absence_is_refused_and_anything_else_read() -> None:
    source, metrics = Watched(), Metrics()
    source.absent.add("gone")
    source.release.set()
    lookup = SourceLookup(source, metrics, arrival_wait=0.0)

    async def run() -> None:
        with pytest.raises(NamespaceUnavailable, match="does not exist"):
            await lookup.fetch("gone", reason="miss", client="10.0.0.1")
        assert await lookup.fetch("other", reason="miss", client="10.0.0.1") is None

    anyio.run(run)
    assert source.reads == ["other"]
    assert samples(metrics, "sidecar_injector_namespace_reads_refused_total") == {"absent": 1.0}
    assert samples(metrics, "sidecar_injector_namespace_waits_total") == {"not_arrived": 2.0}


def test_with_the_watch_not_live_an_unknown_namespace_is_read_at_once() -> None:
    source, metrics = Watched(live=False), Metrics()
    source.release.set()
    lookup = SourceLookup(source, metrics, arrival_wait=PATIENCE)
    assert anyio.run(lambda: lookup.fetch("new", reason="miss", client="10.0.0.1")) is None
    assert source.reads == ["new"]
    assert samples(metrics, "sidecar_injector_namespace_waits_total") == {}


def test_reads_per_client_are_bounded_by_distinct_names_and_clients_are_apart() -> None:
    source, metrics = Watched(live=False), Metrics()
    lookup = SourceLookup(source, metrics, reads_per_client=2)
    outcomes: dict[str, str] = {}

    async def read(key: str, name: str, client_address: str) -> None:
        try:
            await lookup.fetch(name, reason="recheck", client=client_address)
            outcomes[key] = "read"
        except NamespaceUnavailable as err:
            outcomes[key] = str(err)

    async def run() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read, "a", "ns-a", "10.0.0.2")
            tasks.start_soon(read, "b", "ns-b", "10.0.0.2")
            tasks.start_soon(read, "a-again", "ns-a", "10.0.0.2")  # shares a's place
            while len(source.reads) < 3:
                await anyio.sleep(0.01)
            await read("c", "ns-c", "10.0.0.2")  # a third name: refused at once
            tasks.start_soon(read, "other-client", "ns-c", "10.0.0.1")
            while len(source.reads) < 4:
                await anyio.sleep(0.01)
            source.release.set()
        await read("c-later", "ns-c", "10.0.0.2")  # its reads are over: room again

    anyio.run(run)
    assert "2 other namespaces are being read for this client (10.0.0.2)" in outcomes["c"]
    assert {key for key, outcome in outcomes.items() if outcome == "read"} == {
        "a",
        "b",
        "a-again",
        "other-client",
        "c-later",
    }
    assert samples(metrics, "sidecar_injector_namespace_reads_refused_total") == {
        "client_busy": 1.0
    }


def test_a_request_reaches_its_clients_reads_through_a_per_request_view() -> None:
    source = Watched(live=False)
    source.release.set()
    lookup = SourceLookup(source, Metrics(), reads_per_client=1)
    view = lookup.for_client("10.0.0.9")
    assert view.cached("anything") is None
    assert anyio.run(lambda: view.fetch("anything", reason="miss")) is None
    # Its one place was given back: another name can be read for it.
    assert anyio.run(lambda: view.fetch("something-else", reason="miss")) is None
    assert source.reads == ["anything", "something-else"]
