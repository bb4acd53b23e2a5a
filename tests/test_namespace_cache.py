"""The watch-backed namespace cache against a real HTTP server speaking list/watch.

The official ``kubernetes`` client makes real requests to ``FakeKubeAPI``; no
part of the client is patched. Timing parameters are shrunk so the whole
file runs in seconds; waits poll with a deadline instead of sleeping.
"""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.fake_kube_api import FakeKubeAPI
from webhook.kube_namespaces import KubeNamespaceCache
from webhook.namespaces import (
    FileNamespaces,
    Freshness,
    NamespaceInfo,
    NamespaceSourceError,
    NamespaceUnavailable,
    StaticNamespaces,
    lookup,
    namespace_source_from_args,
)

FAST: dict[str, float] = {
    "watch_timeout_seconds": 30,
    "list_timeout": 2.0,
    "fetch_timeout": 0.5,
    "connect_timeout": 0.5,
    "backoff_initial": 0.02,
    "backoff_max": 0.1,
}

CacheFactory = Callable[..., KubeNamespaceCache]


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def eventually(check: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def labels_of(cache: KubeNamespaceCache, name: str) -> dict[str, str] | None:
    info = cache.cached(name)
    return None if info is None else dict(info.labels)


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    server = FakeKubeAPI().start()
    server.add("demo", {"sidecar-injection": "enabled"}, {"sidecar.mesh.io/log-level": "debug"})
    server.add("legacy")
    yield server
    server.stop()


@pytest.fixture
def make_cache(api: FakeKubeAPI) -> Iterator[CacheFactory]:
    caches: list[KubeNamespaceCache] = []

    def make(*, start: bool = True, **options: float) -> KubeNamespaceCache:
        cache = KubeNamespaceCache(client.Configuration(host=api.url), **{**FAST, **options})
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
    assert cache.wait_ready(5)
    return cache


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
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    api.stop()
    cache = make_cache()
    time.sleep(0.3)  # several failed attempts under the test backoff
    assert not cache.is_ready()
    assert cache.cached("demo") is None
    api.restart()
    assert cache.wait_ready(5)
    assert labels_of(cache, "demo") == {"sidecar-injection": "enabled"}


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
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    cache = make_cache(read_timeout=0.5)
    assert cache.wait_ready(5)
    eventually(lambda: api.open_watches == 1, what="the first watch")
    api.silence_watches()  # half-open: the connection stays, nothing arrives
    api.add("fresh", {"sidecar-injection": "enabled"})
    eventually(lambda: cache.cached("fresh") is not None, timeout=10, what="a new watch")
    assert api.watch_versions[-1] == api.watch_versions[0]  # resumed, nothing was applied
    assert api.requests["list"] == 1


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


def test_while_the_api_server_is_down_cached_labels_are_served_without_blocking(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    api.stop()
    time.sleep(0.2)  # the watch has noticed and is retrying
    started = time.perf_counter()
    for _ in range(10_000):
        assert synced.cached("demo") is not None
        assert synced.cached("unknown") is None
    assert time.perf_counter() - started < 0.5
    assert synced.is_ready()
    assert labels_of(synced, "demo") == {"sidecar-injection": "enabled"}


@pytest.mark.parametrize("history", ["kept", "lost"])
def test_when_the_api_server_comes_back_the_cache_catches_up(
    api: FakeKubeAPI, synced: KubeNamespaceCache, history: str
) -> None:
    api.stop()
    time.sleep(0.2)
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


@pytest.mark.parametrize("removed_by", ["a DELETED event", "a relist"])
def test_a_namespace_deleted_while_it_is_fetched_does_not_come_back(
    api: FakeKubeAPI, make_cache: CacheFactory, removed_by: str
) -> None:
    cache = make_cache(fetch_timeout=10.0)
    assert cache.wait_ready(5)
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
    fetcher.join(10)
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


def test_fetch_raises_unavailable_within_its_timeout_when_the_api_server_is_down(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    api.stop()
    started = time.monotonic()
    with pytest.raises(NamespaceUnavailable, match="brand-new"):
        synced.fetch("brand-new")
    assert time.monotonic() - started < 1.0


def test_fetch_raises_unavailable_within_its_timeout_when_the_api_server_hangs(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    api.stall_gets.set()
    started = time.monotonic()
    with pytest.raises(NamespaceUnavailable):
        synced.fetch("demo-2")
    # fetch_timeout is 0.5 s; urllib3's own retries would make it 2 s.
    assert time.monotonic() - started < 1.2
    api.stall_gets.clear()


def test_concurrent_fetches_of_one_namespace_share_one_request(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    cache = make_cache(fetch_timeout=3.0)
    assert cache.wait_ready(5)
    api.add("burst", {"sidecar-injection": "enabled"}, emit=False)
    api.stall_gets.set()
    results: list[NamespaceInfo | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.fetch("burst"))) for _ in range(5)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    api.stall_gets.clear()
    for thread in threads:
        thread.join(5)
    assert len(results) == 5
    assert all(result is not None and result.name == "burst" for result in results)
    assert api.requests["get"] == 1


def test_cached_makes_no_api_requests(api: FakeKubeAPI, synced: KubeNamespaceCache) -> None:
    before = dict(api.requests)
    for _ in range(1000):
        synced.cached("demo")
        synced.cached("not-there")
    assert dict(api.requests) == before


def test_stop_returns_promptly_while_a_watch_is_open(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    cache = make_cache(watch_timeout_seconds=120)
    assert cache.wait_ready(5)
    eventually(lambda: api.requests["watch"] >= 1, what="the watch to open")
    time.sleep(0.1)
    started = time.monotonic()
    cache.stop()
    assert time.monotonic() - started < 1.0
    assert cache._thread is not None
    assert not cache._thread.is_alive()


def test_stop_returns_promptly_while_backing_off(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    api.stop()
    cache = make_cache(backoff_initial=20.0, backoff_max=20.0)
    time.sleep(0.2)
    started = time.monotonic()
    cache.stop()
    assert time.monotonic() - started < 1.0


def test_an_outage_logs_one_warning_not_one_per_retry(
    api: FakeKubeAPI, synced: KubeNamespaceCache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="webhook.namespaces")
    api.stop()
    time.sleep(0.5)  # many retries under the test backoff
    api.restart()
    api.add("after")  # data from the server is what ends the streak, not a stream opening
    eventually(
        lambda: any("in sync again" in r.getMessage() for r in caplog.records),
        what="the recovery message",
    )
    records = [r for r in caplog.records if r.name == "webhook.namespaces"]
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    retries = [r for r in records if "failed again" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert len(retries) >= 2
    assert warnings[0].exc_info is None  # a network failure is not a traceback
    assert "\n" not in warnings[0].getMessage()


def test_a_server_that_answers_every_watch_with_an_error_gets_backoff_and_one_warning(
    api: FakeKubeAPI, make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="webhook.namespaces")
    api.watch_error = (500, "etcdserver: request timed out")
    cache = make_cache(backoff_initial=0.01, backoff_max=0.64)
    assert cache.wait_ready(5)
    eventually(
        lambda: sum("failed again" in r.msg for r in caplog.records) >= 7,
        what="eight failed watches",
    )
    cache.stop()
    records = [r for r in caplog.records if r.name == "webhook.namespaces"]
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert not [r for r in records if "in sync again" in r.getMessage()]
    # Opening a stream is no recovery: the streak goes on and the delay doubles.
    retries = [r.args for r in records if "failed again" in r.msg]
    assert isinstance(retries[0], tuple)
    assert [args[0] for args in retries[:7]] == [2, 3, 4, 5, 6, 7, 8]  # type: ignore[index]
    delays = [float(args[1]) for args in retries[:7]]  # type: ignore[index, arg-type]
    # Jitter takes each delay into [0.5, 1] x min(0.64, 0.01 x 2^(n-1)).
    assert delays[5] >= 0.5 * 0.32
    assert delays[6] >= 0.5 * 0.64


def test_freshness_counts_the_age_from_the_last_list_event_or_bookmark(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    clock = FakeClock()
    cache = make_cache(clock=clock)
    assert cache.wait_ready(5)
    assert cache.freshness() == Freshness(age_seconds=0.0, reconnects=0, relists=0)
    clock.advance(42.5)
    assert cache.freshness().age_seconds == 42.5
    api.add("fresh")
    eventually(lambda: cache.cached("fresh") is not None, what="the ADDED event")
    assert cache.freshness().age_seconds == 0.0
    clock.advance(30)
    api.add("quiet", emit=False)
    api.bookmark()
    eventually(lambda: cache.freshness().age_seconds == 0.0, what="the BOOKMARK")
    clock.advance(7)
    assert cache.freshness().age_seconds == 7.0


def test_freshness_before_the_first_list_counts_from_start(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    api.stop()
    clock = FakeClock()
    cache = make_cache(clock=clock, start=False)
    clock.advance(100)  # constructed long before it was started
    cache.start()
    clock.advance(12)
    assert cache.freshness() == Freshness(age_seconds=12.0, reconnects=0, relists=0)
    assert not cache.is_ready()


def test_freshness_counts_watch_reconnects_and_relists(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    cache = make_cache(clock=FakeClock())
    assert cache.wait_ready(5)
    eventually(lambda: api.open_watches == 1, what="the first watch")
    assert cache.freshness().reconnects == 0
    api.break_watches()
    eventually(lambda: cache.freshness().reconnects == 1, what="a reconnect")
    eventually(lambda: api.open_watches == 1, what="the second watch")
    api.add("unseen", emit=False)
    api.expire()  # history lost past our version: 410, a relist, a watch from the new list
    eventually(lambda: cache.freshness().relists == 1, what="a relist")
    # The stream ended by expire(), the watch answered 410, the one after the relist.
    eventually(lambda: cache.freshness().reconnects == 3, what="the watch after the relist")
    assert api.requests["list"] == 2


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


def test_the_watch_backed_cache_and_the_source_chooser_import_each_other_one_way() -> None:
    root = Path(__file__).parent.parent / "webhook"

    def imported(module: str) -> set[str]:
        tree = ast.parse((root / f"{module}.py").read_text())
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        return found

    assert not {m for m in imported("kube_namespaces") if m == "webhook.namespaces"}
    assert not {m for m in imported("namespace_types") if m.startswith("webhook")}
    assert "webhook.namespace_types" in imported("namespaces")
    # Only the watch-backed cache talks to the kubernetes client.
    for module in ("namespaces", "namespace_types"):
        assert not {m for m in imported(module) if m.split(".")[0] == "kubernetes"}


def test_a_kubeconfig_selects_the_watch_backed_cache(api: FakeKubeAPI, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: '{api.url}'}}}}]\n"
        "users: [{name: fake, user: {token: secret}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
    )
    source = namespace_source_from_args(
        namespaces_file=None, kubeconfig=kubeconfig, in_cluster=False
    )
    assert isinstance(source, KubeNamespaceCache)
    source.start()
    try:
        assert source.wait_ready(5)
        assert source.cached("demo") is not None
    finally:
        source.stop()


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


def test_choosing_a_file_or_no_source_does_not_import_the_kubernetes_client(
    tmp_path: Path,
) -> None:
    script = (
        "import sys\n"
        "from webhook.namespaces import namespace_source_from_args\n"
        "namespace_source_from_args(namespaces_file=None, kubeconfig=None, in_cluster=False)\n"
        "assert 'kubernetes' not in sys.modules, 'kubernetes was imported'\n"
    )
    env = {"PATH": "/usr/bin:/bin"}  # no KUBECONFIG
    subprocess.run(
        [sys.executable, "-c", script], check=True, env=env, cwd=Path(__file__).parent.parent
    )
