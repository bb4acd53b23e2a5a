"""The watch-backed namespace cache against a real HTTP server speaking list/watch.

The official ``kubernetes`` client's configuration and connection pool make
real requests to ``FakeKubeAPI``; no part of the client is patched. Timing
parameters are shrunk so the whole file runs in seconds. Nothing sleeps for a
fixed time and nothing is timed against a threshold: waits poll for what the
cache or the server reports, with generous deadlines, and the cache's clock
(used for ages, backoff resets and log throttling) is a fake one that moves
only when a test moves it.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import json
import logging
import random
import re
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kubernetes import client

from harness.fake_kube_api import CannedReply, FakeKubeAPI
from harness.threads import PATIENCE, eventually, waiting_for_a_future
from tests.builders import REPO
from webhook.cluster import namespace_cache as kube_namespaces
from webhook.cluster.namespace_cache import KubeNamespaceCache, NamespaceCacheOptions, store
from webhook.cluster.namespaces_file import (
    FileNamespaces,
    Freshness,
    NamespaceInfo,
    NamespaceSourceError,
    NamespaceUnavailable,
    StaticNamespaces,
    lookup,
)
from webhook.service.server import namespace_source_from_args

FAST = NamespaceCacheOptions(
    watch_timeout_seconds=30,
    list_timeout=2.0,
    fetch_timeout=0.5,
    connect_timeout=0.5,
    backoff_initial=0.02,
    backoff_max=0.1,
)

CacheFactory = Callable[..., KubeNamespaceCache]


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def labels_of(cache: KubeNamespaceCache, name: str) -> dict[str, str] | None:
    info = cache.cached(name)
    return None if info is None else dict(info.labels)


def cache_log(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "webhook.namespaces"]


RETRY = re.compile(r"; retry (\d+) in ([0-9.e-]+)s")


def retries(caplog: pytest.LogCaptureFixture) -> list[tuple[int, float]]:
    """(retry number in the backoff streak, delay) of each failure logged, warning or debug."""
    found = (RETRY.search(r.getMessage()) for r in cache_log(caplog))
    return [(int(m[1]), float(m[2])) for m in found if m]


def failures(caplog: pytest.LogCaptureFixture) -> int:
    """How many failed attempts the cache has logged (as a warning or at debug level)."""
    return len(retries(caplog))


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in cache_log(caplog) if r.levelno >= logging.WARNING]


def flap(
    api: FakeKubeAPI,
    cache: KubeNamespaceCache,
    caplog: pytest.LogCaptureFixture,
    name: str,
    before_break: Callable[[], None] = lambda: None,
) -> None:
    """One round of a flapping watch: data arrives (``name`` is added), then the stream breaks."""
    eventually(lambda: api.open_watches == 1, what="an open watch")
    api.add(name)
    eventually(lambda: cache.cached(name) is not None, what=f"the event for {name}")
    before_break()
    seen = failures(caplog)
    api.break_watches()
    eventually(lambda: failures(caplog) == seen + 1, what="the failure")


@pytest.fixture(autouse=True)
def _debug_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="webhook.namespaces")


@pytest.fixture
def api(fake_api: FakeKubeAPI) -> FakeKubeAPI:
    fake_api.add("demo", {"sidecar-injection": "enabled"}, {"sidecar.mesh.io/log-level": "debug"})
    fake_api.add("legacy")
    return fake_api


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_cache(api: FakeKubeAPI, clock: FakeClock) -> Iterator[CacheFactory]:
    caches: list[KubeNamespaceCache] = []

    def make(
        *, start: bool = True, rng: random.Random | None = None, **options: Any
    ) -> KubeNamespaceCache:
        jitter = rng or random.Random(7)  # noqa: S311 - the same jitter on every run
        settings = dataclasses.replace(FAST, **options)
        cache = KubeNamespaceCache(
            client.Configuration(host=api.url), settings, clock=clock, rng=jitter
        )
        caches.append(cache)
        if start:
            cache.start()
        return cache

    yield make
    for cache in caches:
        cache.stop()


@pytest.fixture
def synced(make_cache: CacheFactory) -> KubeNamespaceCache:
    cache = make_cache()
    assert cache.wait_ready(PATIENCE)
    return cache


# --- list and watch ---------------------------------------------------------------------


def test_labels_and_annotations_come_from_the_initial_list(synced: KubeNamespaceCache) -> None:
    demo = synced.cached("demo")
    assert demo == NamespaceInfo(
        "demo",
        labels={"sidecar-injection": "enabled"},
        annotations={"sidecar.mesh.io/log-level": "debug"},
    )
    legacy = synced.cached("legacy")
    assert legacy is not None
    assert dict(legacy.labels) == {}
    assert synced.cached("nowhere") is None
    assert "synced, 2 namespaces" in synced.describe()


def test_the_cache_is_ready_only_after_the_first_successful_list(
    api: FakeKubeAPI, make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    api.stop()
    cache = make_cache()
    eventually(lambda: failures(caplog) >= 3, what="three failed lists")
    assert not cache.is_ready()
    assert cache.cached("demo") is None
    api.restart()
    assert cache.wait_ready(PATIENCE)
    assert labels_of(cache, "demo") == {"sidecar-injection": "enabled"}


def test_a_long_list_comes_in_pages_and_is_whole(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    for number in range(1200):
        api.add(f"team-{number:04d}", {"n": str(number)})
    cache = make_cache()
    assert cache.wait_ready(PATIENCE)
    assert api.list_limits == [500, 500, 500]
    assert labels_of(cache, "team-1199") == {"n": "1199"}
    assert "1202 namespaces" in cache.describe()


def test_a_continue_token_that_expires_between_pages_restarts_the_list(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    for number in range(600):
        api.add(f"team-{number:04d}")
    api.continue_gone_once = True
    cache = make_cache()
    assert cache.wait_ready(PATIENCE)
    assert api.requests["list"] == 4  # page 1, 410 for page 2, then both pages again
    assert cache.cached("team-0599") is not None
    assert cache.freshness().relists == 0  # one list, started over; not a relist


def test_a_modified_namespace_is_seen_without_a_restart(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    api.modify("legacy", {"sidecar-injection": "enabled", "sidecar.mesh.io/proxy-cpu-request": "1"})
    eventually(
        lambda: (
            labels_of(synced, "legacy")
            == {"sidecar-injection": "enabled", "sidecar.mesh.io/proxy-cpu-request": "1"}
        ),
        what="the MODIFIED event",
    )
    assert api.requests["list"] == 1


def test_added_and_deleted_namespaces_appear_and_disappear(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    api.add("fresh", {"sidecar-injection": "disabled"})
    eventually(lambda: synced.cached("fresh") is not None, what="the ADDED event")
    api.delete("demo")
    eventually(lambda: synced.cached("demo") is None, what="the DELETED event")
    assert synced.cached("legacy") is not None


def test_bookmarks_advance_the_resource_version_without_changing_anything(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    api.add("quiet", emit=False)  # a change this watch is not told about
    api.bookmark()
    eventually(lambda: synced.resource_version == api.resource_version, what="the BOOKMARK event")
    assert synced.cached("quiet") is None
    assert labels_of(synced, "demo") == {"sidecar-injection": "enabled"}


@pytest.mark.parametrize("advanced_by", ["events", "bookmark"])
def test_a_broken_stream_resumes_from_the_last_version_it_saw(
    api: FakeKubeAPI, synced: KubeNamespaceCache, advanced_by: str
) -> None:
    eventually(lambda: api.open_watches == 1, what="the first watch")
    started_at = api.watch_versions[-1]
    api.add("one", emit=advanced_by == "events")
    api.add("two", emit=advanced_by == "events")
    if advanced_by == "bookmark":
        api.bookmark()
    eventually(lambda: synced.resource_version == api.resource_version, what="the events")
    seen = api.resource_version
    # etcd compacts history as a real cluster does: only a resume from the
    # last version seen avoids a 410 and a full relist.
    api.compact()
    api.break_watches()
    eventually(lambda: len(api.watch_versions) >= 2, what="the watch to reconnect")
    assert started_at != seen
    assert api.watch_versions[1] == seen
    api.add("three")
    eventually(lambda: synced.cached("three") is not None, what="events after the resume")
    assert api.requests["list"] == 1


def test_a_silent_watch_is_treated_as_broken_and_resumed(
    api: FakeKubeAPI, make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(read_timeout=0.5)
    assert cache.wait_ready(PATIENCE)
    eventually(lambda: api.open_watches == 1, what="the first watch")
    api.silence_watches()  # half-open: the connection stays, nothing arrives
    api.add("fresh", {"sidecar-injection": "enabled"})
    eventually(lambda: cache.cached("fresh") is not None, what="a new watch")
    assert api.watch_versions[-1] == api.watch_versions[0]  # resumed, nothing was applied
    assert api.requests["list"] == 1
    assert cache.freshness().reconnects == 1
    assert "the watch was silent for 0.5s" in warnings_in(caplog)[0]


def test_each_watch_asks_the_server_to_end_it_before_it_could_look_dead(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    # Defaults: 90 s of silence is a dead connection, so a quiet watch (which
    # kube-apiserver leaves silent: no bookmarks until a namespace changes)
    # must be ended by the server sooner, and replicas must not renew in step.
    cache = make_cache(watch_timeout_seconds=45.0, rng=random.Random())  # noqa: S311
    assert cache.wait_ready(PATIENCE)
    for _ in range(20):
        eventually(lambda: api.open_watches == 1, what="an open watch")
        api.break_watches()
        eventually(lambda: api.open_watches == 0, what="the watch to end")
    cache.stop()
    assert all(45 <= timeout < 81 for timeout in api.watch_timeouts), api.watch_timeouts
    assert len(set(api.watch_timeouts)) > 1
    assert NamespaceCacheOptions().read_timeout == 90.0
    # Shorter read timeouts (tests) cap the watch's timeout below them.
    seen = len(api.watch_timeouts)
    short = make_cache(read_timeout=10.0, watch_timeout_seconds=45.0)
    assert short.wait_ready(PATIENCE)
    eventually(lambda: len(api.watch_timeouts) > seen, what="its watch")
    assert api.watch_timeouts[seen] == 9


def test_a_quiet_watch_that_ends_cleanly_at_its_timeout_counts_as_in_sync(
    api: FakeKubeAPI, make_cache: CacheFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(watch_timeout_seconds=1)
    assert cache.wait_ready(PATIENCE)
    eventually(lambda: api.open_watches == 1, what="the first watch")
    clock.advance(100.0)  # on the cache's clock the watch has now lasted 100 s
    assert cache.freshness().age_seconds == 100.0
    # The server ends it at its 1 s timeout, cleanly, having had nothing to send.
    eventually(lambda: cache.freshness().age_seconds == 0.0, what="the clean end")
    assert cache.freshness().reconnects >= 1
    assert failures(caplog) == 0


def test_a_watch_ended_at_once_does_not_count_as_in_sync(
    api: FakeKubeAPI, synced: KubeNamespaceCache, clock: FakeClock
) -> None:
    eventually(lambda: api.open_watches == 1, what="the first watch")
    clock.advance(100.0)
    api.break_watches()  # the next watch starts 100 s after the list, on the cache's clock
    eventually(lambda: len(api.watch_versions) == 2, what="the second watch")
    eventually(lambda: api.open_watches == 1, what="the second watch to be open")
    api.end_watches()  # ended long before its timeout: proves nothing
    eventually(lambda: len(api.watch_versions) == 3, what="the third watch")
    assert synced.freshness().age_seconds == 100.0


@pytest.mark.parametrize("gone_as", ["http", "event"])
def test_an_expired_resource_version_makes_the_cache_list_again(
    api: FakeKubeAPI, synced: KubeNamespaceCache, gone_as: Any
) -> None:
    # Changes whose events were lost with the compacted history.
    api.add("created-meanwhile", {"team": "a"}, emit=False)
    api.modify("demo", {"sidecar-injection": "disabled"}, emit=False)
    api.delete("legacy", emit=False)
    api.expire(gone_as=gone_as)
    eventually(lambda: api.requests["list"] == 2, what="a relist after 410")
    eventually(lambda: synced.cached("legacy") is None, what="the relisted state")
    assert labels_of(synced, "created-meanwhile") == {"team": "a"}
    assert labels_of(synced, "demo") == {"sidecar-injection": "disabled"}
    # And the new watch follows on from the relist.
    api.add("after", {"x": "y"})
    eventually(lambda: synced.cached("after") is not None, what="events after the relist")
    assert synced.is_ready()


def test_while_the_api_server_is_down_cached_labels_are_still_served(
    api: FakeKubeAPI, synced: KubeNamespaceCache, caplog: pytest.LogCaptureFixture
) -> None:
    api.stop()
    eventually(lambda: failures(caplog) >= 2, what="the watch to notice and retry")
    assert synced.is_ready()
    assert labels_of(synced, "demo") == {"sidecar-injection": "enabled"}
    assert synced.cached("unknown") is None


@pytest.mark.parametrize("history", ["kept", "lost"])
def test_when_the_api_server_comes_back_the_cache_catches_up(
    api: FakeKubeAPI, synced: KubeNamespaceCache, history: str, caplog: pytest.LogCaptureFixture
) -> None:
    api.stop()
    eventually(lambda: failures(caplog) >= 2, what="the watch to notice and retry")
    api.modify("demo", {"sidecar-injection": "disabled"}, emit=history == "kept")
    if history == "lost":
        api.expire()
    api.restart()
    eventually(
        lambda: labels_of(synced, "demo") == {"sidecar-injection": "disabled"},
        what="the change made while the server was down",
    )
    api.add("later")
    eventually(lambda: synced.cached("later") is not None, what="the resumed watch")


def test_cached_makes_no_api_requests(api: FakeKubeAPI, synced: KubeNamespaceCache) -> None:
    before = dict(api.requests)
    for _ in range(1000):
        synced.cached("demo")
        synced.cached("not-there")
    assert dict(api.requests) == before


# --- backoff and log volume ---------------------------------------------------------------


def test_a_server_that_answers_every_watch_with_an_error_gets_backoff_and_one_warning(
    api: FakeKubeAPI, make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    api.watch_error = (500, "etcdserver: request timed out")
    cache = make_cache(backoff_initial=0.01, backoff_max=0.64)
    assert cache.wait_ready(PATIENCE)
    eventually(lambda: failures(caplog) >= 8, what="eight failed watches")
    cache.stop()
    warnings = warnings_in(caplog)
    assert len(warnings) == 1, warnings
    assert "watch error 500: etcdserver: request timed out" in warnings[0]
    assert not [r for r in cache_log(caplog) if "in sync again" in r.getMessage()]
    # Opening a stream is no recovery: the streak goes on and the delay doubles.
    logged = retries(caplog)[:8]
    assert [streak for streak, _ in logged] == [1, 2, 3, 4, 5, 6, 7, 8]
    # Jitter takes each delay into [0.5, 1] x min(0.64, 0.01 x 2^(n-1)).
    for streak, delay in logged:
        ceiling = min(0.64, 0.01 * 2 ** (streak - 1))
        assert 0.5 * ceiling - 0.001 <= delay <= ceiling + 0.001


def test_the_backoff_streak_ends_only_after_a_healthy_period(
    api: FakeKubeAPI, make_cache: CacheFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(backoff_initial=0.01, backoff_max=0.08, healthy_after=60.0)
    assert cache.wait_ready(PATIENCE)
    for number, pause in enumerate((0.0, 59.0, 59.0, 61.0, 1.0)):
        # Data arrives (the stream works), then it breaks `pause` seconds after the last failure.
        flap(api, cache, caplog, f"event-{number}", lambda pause=pause: clock.advance(pause))
    # Data between failures does not end the streak; 61 s without a failure does.
    assert [streak for streak, _ in retries(caplog)] == [1, 2, 3, 1, 2]


def test_an_outage_logs_one_warning_and_one_recovery_line(
    api: FakeKubeAPI, synced: KubeNamespaceCache, caplog: pytest.LogCaptureFixture
) -> None:
    api.stop()
    eventually(lambda: failures(caplog) >= 4, what="several retries")
    api.restart()
    api.add("after")  # data from the server is what ends the streak, not a stream opening
    eventually(
        lambda: any("in sync again" in r.getMessage() for r in cache_log(caplog)),
        what="the recovery message",
    )
    records = cache_log(caplog)
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].exc_info is None  # a network failure is not a traceback
    assert "\n" not in warnings[0].getMessage()
    assert sum("in sync again" in r.getMessage() for r in records) == 1


def test_a_flapping_watch_logs_one_warning_and_one_recovery_per_interval(
    api: FakeKubeAPI, synced: KubeNamespaceCache, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    for number in range(6):
        flap(api, synced, caplog, f"event-{number}")
    lines = [r for r in cache_log(caplog) if r.levelno >= logging.INFO]
    assert sum(r.levelno == logging.WARNING for r in lines) == 1
    assert sum("in sync again" in r.getMessage() for r in lines) == 1
    clock.advance(60.0)  # the next interval may say it again
    eventually(lambda: api.open_watches == 1, what="an open watch")
    api.break_watches()
    eventually(lambda: len(warnings_in(caplog)) == 2, what="the next interval's warning")


# --- freshness ------------------------------------------------------------------------


def test_freshness_counts_the_age_from_the_last_list_event_or_bookmark(
    api: FakeKubeAPI, synced: KubeNamespaceCache, clock: FakeClock
) -> None:
    assert synced.freshness() == Freshness(age_seconds=0.0, reconnects=0, relists=0)
    clock.advance(42.5)
    assert synced.freshness().age_seconds == 42.5
    api.add("fresh")
    eventually(lambda: synced.cached("fresh") is not None, what="the ADDED event")
    assert synced.freshness().age_seconds == 0.0
    clock.advance(30)
    api.add("quiet", emit=False)
    api.bookmark()
    eventually(lambda: synced.freshness().age_seconds == 0.0, what="the BOOKMARK")
    clock.advance(7)
    assert synced.freshness().age_seconds == 7.0


def test_freshness_before_the_first_list_counts_from_start(
    api: FakeKubeAPI, make_cache: CacheFactory, clock: FakeClock
) -> None:
    api.stop()
    cache = make_cache(start=False)
    clock.advance(100)  # constructed long before it was started
    cache.start()
    clock.advance(12)
    assert cache.freshness() == Freshness(age_seconds=12.0, reconnects=0, relists=0)
    assert not cache.is_ready()


def test_freshness_counts_watch_reconnects_and_relists(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    eventually(lambda: api.open_watches == 1, what="the first watch")
    assert synced.freshness().reconnects == 0
    api.break_watches()
    eventually(lambda: synced.freshness().reconnects == 1, what="a reconnect")
    eventually(lambda: api.open_watches == 1, what="the second watch")
    api.add("unseen", emit=False)
    api.expire()  # history lost past our version: 410, a relist, a watch from the new list
    eventually(lambda: synced.freshness().relists == 1, what="a relist")
    # The stream ended by expire(), the watch answered 410, the one after the relist.
    eventually(lambda: synced.freshness().reconnects == 3, what="the watch after the relist")
    assert api.requests["list"] == 2


# --- fetch ------------------------------------------------------------------------------


def test_fetch_reads_a_namespace_the_watch_has_not_delivered_and_caches_it(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    api.add("brand-new", {"sidecar-injection": "enabled"}, emit=False)
    assert synced.cached("brand-new") is None
    info = synced.fetch("brand-new")
    assert info is not None
    assert dict(info.labels) == {"sidecar-injection": "enabled"}
    assert synced.cached("brand-new") == info
    assert api.requests["get"] == 1


def test_lookup_answers_from_memory_and_fetches_only_on_a_miss(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    api.add("unseen", {"sidecar-injection": "enabled"}, emit=False)
    demo = lookup(synced, "demo")
    assert demo is not None
    assert dict(demo.labels) == {"sidecar-injection": "enabled"}
    assert api.requests["get"] == 0
    unseen = lookup(synced, "unseen")
    assert unseen is not None
    assert dict(unseen.labels) == {"sidecar-injection": "enabled"}
    assert lookup(synced, "nowhere") is None
    assert api.requests["get"] == 2


@pytest.mark.parametrize("removed_by", ["a DELETED event", "a relist"])
def test_a_namespace_deleted_while_it_is_fetched_does_not_come_back(
    api: FakeKubeAPI, make_cache: CacheFactory, removed_by: str
) -> None:
    cache = make_cache(fetch_timeout=PATIENCE)
    assert cache.wait_ready(PATIENCE)
    api.add("doomed", {"sidecar-injection": "enabled"}, emit=False)  # not delivered yet
    api.hold_get_replies.set()
    results: list[NamespaceInfo | None] = []
    fetcher = threading.Thread(target=lambda: results.append(cache.fetch("doomed")))
    fetcher.start()
    eventually(lambda: api.held_gets == 1, what="the GET to have read the namespace")
    if removed_by == "a DELETED event":
        api.delete("doomed")
    else:  # the deletion's event is lost; the watch gets 410 and lists again
        api.delete("doomed", emit=False)
        api.expire()
        eventually(lambda: api.requests["list"] == 2, what="the relist")
    eventually(lambda: cache.resource_version == api.resource_version, what="the removal")
    api.release_gets()
    fetcher.join(PATIENCE)
    assert [info.name if info else None for info in results] == ["doomed"]  # what it read
    assert cache.cached("doomed") is None
    api.add("later")  # the watch goes on; the deleted namespace stays gone
    eventually(lambda: cache.cached("later") is not None, what="a later event")
    assert cache.cached("doomed") is None


def test_fetch_of_a_namespace_that_does_not_exist_is_none(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    assert synced.fetch("missing") is None
    assert synced.cached("missing") is None
    assert api.requests["get"] == 1


def test_fetch_of_a_name_no_namespace_can_have_is_none_without_a_request(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    for name in ("Upper", "a/b", "../secrets", "x" * 64, "", "dot.ted"):
        assert synced.fetch(name) is None
    assert api.requests["get"] == 0


def status_reply(code: int, reason: str, message: str) -> CannedReply:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    return CannedReply(code, json.dumps({**body, "reason": reason, "message": message}).encode())


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(
            status_reply(500, "InternalError", "etcdserver: leader changed"),
            "HTTP 500: etcdserver: leader changed",
            id="5xx",
        ),
        pytest.param(
            status_reply(503, "ServiceUnavailable", "the server is shutting down"),
            "HTTP 503: the server is shutting down",
            id="503",
        ),
        pytest.param(
            status_reply(403, "Forbidden", 'cannot get resource "namespaces"'),
            'HTTP 403: cannot get resource "namespaces"',
            id="forbidden",
        ),
        pytest.param(
            status_reply(429, "TooManyRequests", "too many requests"), "HTTP 429", id="429"
        ),
        pytest.param(CannedReply(502, b"<html>bad gateway</html>"), "HTTP 502", id="proxy-5xx"),
        pytest.param(
            CannedReply(404, b"<html>no such page</html>"),
            "HTTP 404 without a Kubernetes NotFound status",
            id="404-not-from-the-api-server",
        ),
        pytest.param(CannedReply(200, b'{"kind": "Namespace", "meta'), "not a Namespace", id="cut"),
        pytest.param(CannedReply(200, b"\x00\xffgarbage"), "not a Namespace", id="garbled"),
        pytest.param(CannedReply(200, b"[1, 2]"), "not a Namespace", id="not-an-object"),
        pytest.param(
            CannedReply(200, b'{"kind": "Namespace", "metadata": {"name": "other"}}'),
            "answered for other",
            id="another-namespace",
        ),
        pytest.param(
            CannedReply(200, b'{"metadata": {"name": "wanted", "labels": {"a": 1}}}'),
            "expected a string",
            id="non-string-label",
        ),
        pytest.param(
            CannedReply(
                200,
                gzip.compress(b'{"metadata": {"name": "wanted"}}'),
                (("Content-Type", "application/json"), ("Content-Encoding", "gzip")),
            ),
            "Content-Encoding 'gzip'",
            id="compressed",
        ),
        pytest.param(
            CannedReply(200, b" " * (kube_namespaces.MAX_OBJECT_BYTES + 1)),
            "over the 4194304-byte limit",
            id="oversized",
        ),
    ],
)
def test_fetch_raises_unavailable_for_every_answer_but_a_namespace_or_not_found(
    api: FakeKubeAPI, synced: KubeNamespaceCache, reply: CannedReply, expected: str
) -> None:
    api.get_reply = reply
    with pytest.raises(NamespaceUnavailable) as caught:
        synced.fetch("wanted")
    message = str(caught.value)
    assert message.startswith("namespace wanted: ")
    assert expected in message
    assert "\n" not in message
    assert api.requests["get"] == 1  # no retries: admission decides, the apiserver retries
    assert synced.cached("wanted") is None


def test_fetch_raises_unavailable_when_the_api_server_is_down(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    api.stop()
    with pytest.raises(NamespaceUnavailable, match=r"namespace brand-new: .*Connection refused"):
        synced.fetch("brand-new")


@pytest.mark.parametrize("hang", ["no answer", "a body that trickles"])
def test_fetch_gives_up_after_its_timeout_while_the_api_server_still_hangs(
    api: FakeKubeAPI, synced: KubeNamespaceCache, hang: str
) -> None:
    if hang == "no answer":
        api.stall_gets.set()
    else:
        api.trickle_gets = True
    started = time.monotonic()
    # Whichever comes first says so: the caller's wait, or the GET's own read timeout.
    with pytest.raises(NamespaceUnavailable, match=r"within 0\.5s|read timeout=0\.5"):
        synced.fetch("demo-2")
    # The server is still holding the request: fetch did not wait for it.
    assert api.stall_gets.is_set() or api.trickle_gets
    assert time.monotonic() - started < PATIENCE
    assert api.requests["get"] == 1  # urllib3's retries are off
    api.release_gets()
    api.trickle_gets = False


def fetch_in_threads(
    cache: KubeNamespaceCache, name: str, count: int
) -> tuple[list[threading.Thread], list[NamespaceInfo | None]]:
    results: list[NamespaceInfo | None] = []
    threads = [threading.Thread(target=lambda: results.append(cache.fetch(name))) for _ in range(count)]  # fmt: skip
    for thread in threads:
        thread.start()
    return threads, results


def release_when_waiting(
    api: FakeKubeAPI, waiting: list[threading.Thread], others: list[threading.Thread]
) -> None:
    """Once every thread of ``waiting`` waits for its GET, let the server answer; join all."""
    eventually(lambda: all(map(waiting_for_a_future, waiting)), what="every fetch to wait")
    api.release_gets()
    for thread in [*others, *waiting]:
        thread.join(PATIENCE)


def test_fetches_never_take_the_answer_of_a_get_sent_before_they_were_called_and_share_one(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    """A namespace labelled while a GET is under way: callers after the label must see it."""
    cache = make_cache(fetch_timeout=PATIENCE)
    assert cache.wait_ready(PATIENCE)
    api.add("late", {}, emit=False)
    api.hold_get_replies.set()
    first, first_results = fetch_in_threads(cache, "late", 1)
    eventually(lambda: api.held_gets == 1, what="the first GET to have read the namespace")
    # The label lands now; pods created from here on were admitted with it.
    api.modify("late", {"sidecar-injection": "enabled"}, emit=False)
    later, later_results = fetch_in_threads(cache, "late", 5)
    release_when_waiting(api, later, first)
    [before] = first_results
    assert before is not None
    assert dict(before.labels) == {}  # what the server had when that GET read it
    assert len(later_results) == 5
    for result in later_results:
        assert result is not None
        assert dict(result.labels) == {"sidecar-injection": "enabled"}
    assert api.requests["get"] == 2  # the later callers shared one GET, sent after the first


def test_a_fetch_that_waits_for_a_fetch_thread_is_shared_with_later_callers(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    # Not sent yet (every fetch thread is busy), so joining it is safe.
    cache = make_cache(fetch_timeout=PATIENCE, fetch_threads=1)
    assert cache.wait_ready(PATIENCE)
    api.add("queued", {"sidecar-injection": "enabled"}, emit=False)
    api.stall_gets.set()
    busy, _ = fetch_in_threads(cache, "other", 1)
    eventually(lambda: api.requests["get"] == 1, what="the only fetch thread to be busy")
    threads, results = fetch_in_threads(cache, "queued", 4)
    release_when_waiting(api, threads, busy)
    assert [result.name if result else None for result in results] == ["queued"] * 4
    assert api.requests["get"] == 2  # "other", then one for all four


def test_fetches_of_too_many_namespaces_at_once_are_refused_not_queued(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    cache = make_cache(fetch_timeout=PATIENCE, max_fetches_in_flight=2)
    assert cache.wait_ready(PATIENCE)
    api.stall_gets.set()
    threads = [
        threading.Thread(target=lambda n=n: cache.fetch(f"slow-{n}"), daemon=True) for n in range(2)
    ]
    for thread in threads:
        thread.start()
    eventually(lambda: api.requests["get"] == 2, what="two GETs in flight")
    with pytest.raises(NamespaceUnavailable, match="2 other namespaces are being read"):
        cache.fetch("one-more")
    api.release_gets()
    for thread in threads:
        thread.join(PATIENCE)


def test_a_stopped_cache_fails_fetches_instead_of_hanging(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    cache = make_cache(fetch_timeout=PATIENCE)
    assert cache.wait_ready(PATIENCE)
    api.stall_gets.set()
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            cache.fetch("slow")
        except NamespaceUnavailable as err:
            errors.append(err)

    fetcher = threading.Thread(target=fetch)
    fetcher.start()
    eventually(lambda: api.requests["get"] == 1, what="the GET in flight")
    cache.stop()  # cuts the GET off; the waiting fetch fails at once
    fetcher.join(PATIENCE)
    assert not fetcher.is_alive()
    assert len(errors) == 1
    with pytest.raises(NamespaceUnavailable, match="stopped"):
        cache.fetch("later")
    api.release_gets()


# --- bounds -----------------------------------------------------------------------------


def test_a_gigabyte_list_is_refused_after_a_few_mebibytes_and_the_cache_recovers(
    api: FakeKubeAPI, make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    api.huge_lists = 1 << 30
    cache = make_cache(backoff_initial=0.01, backoff_max=0.02)
    eventually(lambda: failures(caplog) >= 1, what="the list to fail")
    assert not cache.is_ready()
    # Smaller pages were asked for first, down to one namespace a page.
    assert api.list_limits[:5] == [500, 125, 31, 7, 1]
    # What the server got out before the client hung up: the page limit plus
    # socket buffers, nowhere near the gigabyte it meant to send.
    assert api.list_bytes_sent < kube_namespaces.MAX_LIST_PAGE_BYTES + 32 * 1024 * 1024
    assert "over the 8388608-byte limit" in warnings_in(caplog)[0]
    api.huge_lists = None
    assert cache.wait_ready(PATIENCE)
    assert cache.cached("demo") is not None


def test_a_watch_event_over_the_limit_breaks_the_stream_and_the_watch_resumes(
    api: FakeKubeAPI, synced: KubeNamespaceCache, caplog: pytest.LogCaptureFixture
) -> None:
    eventually(lambda: api.open_watches == 1, what="the first watch")
    api.huge_event(kube_namespaces.MAX_OBJECT_BYTES + 1024)
    eventually(lambda: failures(caplog) == 1, what="the oversized event")
    assert "a watch event is over the 4194304-byte limit" in warnings_in(caplog)[0]
    api.add("after")
    eventually(lambda: synced.cached("after") is not None, what="the resumed watch")
    assert api.requests["list"] == 1


def test_only_sidecar_annotations_are_kept_in_memory(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    last_applied = json.dumps({"metadata": {"annotations": {"x": "y" * 200_000}}})
    annotations = {
        "kubectl.kubernetes.io/last-applied-configuration": last_applied,
        "sidecar.mesh.io/log-level": "info",
    }
    api.add("applied", {"sidecar-injection": "enabled"}, annotations)
    eventually(lambda: synced.cached("applied") is not None, what="the ADDED event")
    info = synced.cached("applied")
    assert info is not None
    assert dict(info.annotations) == {"sidecar.mesh.io/log-level": "info"}
    assert dict(info.labels) == {"sidecar-injection": "enabled"}


def test_a_namespace_too_large_to_cache_is_fetched_each_time_and_not_kept(
    api: FakeKubeAPI, synced: KubeNamespaceCache, caplog: pytest.LogCaptureFixture
) -> None:
    huge = {"sidecar.mesh.io/exclude-outbound-cidrs": "10.0.0.0/8," * 8000}
    api.add("huge", {"sidecar-injection": "enabled"}, huge)
    eventually(lambda: synced.resource_version == api.resource_version, what="the ADDED event")
    assert synced.cached("huge") is None
    assert any("over the 64 KiB a cached namespace may hold" in w for w in warnings_in(caplog))
    for attempt in (1, 2):
        info = synced.fetch("huge")
        assert info is not None
        assert info.annotations == huge
        assert synced.cached("huge") is None
        assert api.requests["get"] == attempt
    # A cached namespace that grows too large leaves the cache (no stale copy).
    api.modify("demo", {"sidecar-injection": "enabled"}, huge)
    eventually(lambda: synced.cached("demo") is None, what="the MODIFIED event")


def test_a_full_cache_keeps_what_fits_and_says_so_once(
    api: FakeKubeAPI, make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    for number in range(20):
        api.add(f"team-{number:02d}", {"n": str(number)})
    one = store.estimated_bytes(NamespaceInfo("team-00", {"n": "0"}))
    cache = make_cache(max_cache_bytes=10 * one)
    assert cache.wait_ready(PATIENCE)
    cached = [n for n in range(20) if cache.cached(f"team-{n:02d}") is not None]
    assert 5 <= len(cached) <= 10
    missing = next(n for n in range(20) if cache.cached(f"team-{n:02d}") is None)
    for extra in range(5):
        api.add(f"late-{extra}")
    eventually(lambda: cache.resource_version == api.resource_version, what="the events")
    full = [w for w in warnings_in(caplog) if "do not fit" in w]
    assert len(full) == 1, full
    info = cache.fetch(f"team-{missing:02d}")  # still answered, from the API server
    assert info is not None
    assert info.labels == {"n": str(missing)}


@pytest.mark.parametrize(
    "shape",
    [
        {"labels": 0, "annotations": 0, "text": ""},
        {"labels": 3, "annotations": 1, "text": "v"},
        {"labels": 12, "annotations": 4, "text": "value-" * 8},
        {"labels": 60, "annotations": 12, "text": "x" * 63},
        {"labels": 5, "annotations": 5, "text": "Grüße, 世界 🌍" * 4},  # not all ASCII
    ],
)
def test_the_memory_estimate_of_a_cached_namespace_is_not_below_what_it_takes(
    shape: dict[str, Any],
) -> None:
    text = shape["text"]

    def parsed(number: int) -> NamespaceInfo:
        metadata = {
            "name": f"namespace-{number:05d}",
            "labels": {f"example.com/label-{n}": f"{text}{n}" for n in range(shape["labels"])},
            "annotations": {
                f"sidecar.mesh.io/key-{n}": f"{text}{n}" for n in range(shape["annotations"])
            },
        }
        # Parsed from JSON bytes as the cache does, so every string is its own object.
        return store.parse(orjson.loads(orjson.dumps({"metadata": metadata})))

    count = 500
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = {info.name: info for info in map(parsed, range(count))}
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    estimate = sum(map(store.estimated_bytes, kept.values()))
    assert estimate >= taken, (estimate / count, taken / count)


# --- stop -------------------------------------------------------------------------------


def test_stop_cuts_an_open_watch_off(api: FakeKubeAPI, make_cache: CacheFactory) -> None:
    cache = make_cache(watch_timeout_seconds=120, stop_timeout=PATIENCE)
    assert cache.wait_ready(PATIENCE)
    eventually(lambda: api.open_watches == 1, what="the watch to open")
    cache.stop()  # joins the thread; without the cut it would wait for the watch's 120 s
    thread = cache._reflector.thread
    assert thread is not None
    assert not thread.is_alive()


def test_stop_interrupts_a_backoff(
    api: FakeKubeAPI, make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    api.stop()
    cache = make_cache(backoff_initial=120.0, backoff_max=120.0, stop_timeout=PATIENCE)
    eventually(lambda: failures(caplog) == 1, what="the first failure")
    cache.stop()
    thread = cache._reflector.thread
    assert thread is not None
    assert not thread.is_alive()


# --- choosing a source, and the module layout -------------------------------------------


def test_a_kubeconfig_selects_the_watch_backed_cache(api: FakeKubeAPI, tmp_path: Path) -> None:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", token="secret")
    source = namespace_source_from_args(
        namespaces_file=None, kubeconfig=kubeconfig, in_cluster=False
    )
    assert isinstance(source, KubeNamespaceCache)
    source.start()
    try:
        assert source.wait_ready(PATIENCE)
        assert source.cached("demo") is not None
        assert source.fetch("legacy") is not None  # the token goes with every request
    finally:
        source.stop()
    assert api.authorizations == {"Bearer secret"}


def test_an_explicit_namespaces_file_wins_over_a_cluster(tmp_path: Path) -> None:
    path = tmp_path / "ns.yaml"
    path.write_text("kind: Namespace\napiVersion: v1\nmetadata: {name: demo}\n")
    source = namespace_source_from_args(
        namespaces_file=path, kubeconfig=tmp_path / "unused", in_cluster=True
    )
    assert isinstance(source, FileNamespaces)


def test_with_neither_a_cluster_nor_a_file_namespaces_have_no_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    source = namespace_source_from_args(namespaces_file=None, kubeconfig=None, in_cluster=False)
    assert isinstance(source, StaticNamespaces)
    assert source.is_ready()
    assert source.cached("anything") is None
    assert source.fetch("anything") is None


def test_an_unusable_kubeconfig_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(NamespaceSourceError, match="kubeconfig") as caught:
        namespace_source_from_args(
            namespaces_file=None, kubeconfig=tmp_path / "missing", in_cluster=False
        )
    assert "\n" not in str(caught.value)


def test_the_sources_and_the_chooser_in_serve_import_each_other_one_way() -> None:
    root = REPO / "webhook"

    def imported(module: str, *, top_level_only: bool = False) -> set[str]:
        """What a module imports; for a package, what any of its modules does."""
        package = root / module
        files = sorted(package.glob("*.py")) if package.is_dir() else [root / f"{module}.py"]
        found: set[str] = set()
        for file in files:
            tree = ast.parse(file.read_text())
            nodes = tree.body if top_level_only else list(ast.walk(tree))
            for node in nodes:
                if isinstance(node, ast.ImportFrom) and node.module:
                    found.add(node.module)
                elif isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
        return found

    def within(modules: set[str], package: str) -> set[str]:
        return {m for m in modules if m == package or m.startswith(f"{package}.")}

    # The watch-backed cache is a package of modules; all of them count.
    assert (root / "cluster/namespace_cache").is_dir()
    # The two kinds of source share only namespace_types, which imports neither.
    assert not within(imported("cluster/namespace_cache"), "webhook.cluster.namespaces_file")
    assert not within(imported("cluster/namespaces_file"), "webhook.cluster.namespace_cache")
    assert not {m for m in imported("contract/namespaces") if m.startswith("webhook")}
    assert "webhook.contract.namespaces" in imported("cluster/namespaces_file")
    # serve chooses; no source imports it, and it imports the watch-backed
    # cache (and with it the kubernetes client) only once it has chosen it.
    for module in ("cluster/namespaces_file", "contract/namespaces", "cluster/namespace_cache"):
        assert "webhook.service.server" not in imported(module)
    assert "webhook.cluster.namespace_cache" in imported("service/server")
    assert "webhook.cluster.namespace_cache" not in imported("service/server", top_level_only=True)
    # Only the watch-backed cache talks to the kubernetes client.
    for module in ("cluster/namespaces_file", "contract/namespaces"):
        assert not {m for m in imported(module) if m.split(".")[0] == "kubernetes"}
