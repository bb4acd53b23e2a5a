"""The cache lists, then watches from the list's version: pages, events, bookmarks, resumes, 410s."""

from __future__ import annotations

import random
from typing import Any

import pytest

from harness.fake_kube_api import FakeKubeAPI
from harness.threads import PATIENCE, eventually
from tests.unit.namespace_cache.support import (
    CacheFactory,
    FakeClock,
    failures,
    labels_of,
    warnings_in,
)
from webhook.cluster.namespace_cache import KubeNamespaceCache, NamespaceCacheOptions
from webhook.cluster.namespaces_file import (
    NamespaceInfo,
)

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
