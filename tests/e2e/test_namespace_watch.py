"""The watch-backed namespace cache against a real kube-apiserver (the e2e control plane).

The fake API server of ``tests/unit/namespace_cache/`` says what the cache
does with each answer; this file checks that the answers it assumes are the
ones kube-apiserver gives: TLS and client-certificate credentials from a
kubeconfig through the client's pool, paginated lists with continue tokens,
the ``NotFound`` Status of a missing namespace, and when BOOKMARK events come
(only after a namespace changed: why each watch asks the server to end it
before the 90 s read timeout).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from harness.kube.control_plane import ControlPlane
from webhook.cluster.namespace_cache import KubeNamespaceCache, NamespaceCacheOptions

pytestmark = pytest.mark.cluster

PATIENCE = 60.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def eventually(check: Callable[[], bool], *, what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {PATIENCE}s waiting for {what}")
        time.sleep(0.05)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(control_plane: ControlPlane, clock: FakeClock) -> Iterator[KubeNamespaceCache]:
    source = KubeNamespaceCache.from_environment(
        control_plane.kubeconfig,
        in_cluster=False,
        options=NamespaceCacheOptions(
            # Pages of two, so the list follows continue tokens even on a young cluster.
            list_page_size=2,
            # Short watches: kube-apiserver sends a BOOKMARK 2 s before a watch's
            # deadline (once the resource moved on), so within seconds.
            watch_timeout_seconds=5,
        ),
        clock=clock,
    )
    source.start()
    try:
        assert source.wait_ready(PATIENCE)
        yield source
    finally:
        source.stop()


def test_the_cache_lists_in_pages_and_follows_changes_made_with_kubectl(
    control_plane: ControlPlane, cache: KubeNamespaceCache
) -> None:
    # Every namespace of the cluster, over several pages of two.
    for builtin in ("default", "kube-system", "kube-public", "kube-node-lease"):
        assert cache.cached(builtin) is not None
    name = unique("watched")
    control_plane.kubectl("create", "namespace", name)
    eventually(lambda: cache.cached(name) is not None, what="the ADDED event")
    control_plane.kubectl(
        "annotate", "namespace", name, "sidecar.mesh.io/log-level=debug", "other.io/kept=no"
    )
    control_plane.kubectl("label", "namespace", name, "sidecar-injection=enabled")
    eventually(
        lambda: (
            (info := cache.cached(name)) is not None
            and info.labels.get("sidecar-injection") == "enabled"
        ),
        what="the MODIFIED event",
    )
    info = cache.cached(name)
    assert info is not None
    assert dict(info.annotations) == {"sidecar.mesh.io/log-level": "debug"}
    control_plane.kubectl("delete", "namespace", name, "--wait=false")
    # The namespace controller finalizes it; the DELETED event follows.
    eventually(lambda: cache.cached(name) is None, what="the DELETED event")


def test_fetch_reads_a_namespace_and_knows_a_missing_one_by_its_not_found_status(
    control_plane: ControlPlane, cache: KubeNamespaceCache
) -> None:
    info = cache.fetch("kube-system")
    assert info is not None
    assert info.labels.get("kubernetes.io/metadata.name") == "kube-system"
    # None only for the apiserver's own NotFound Status: this is the real one.
    assert cache.fetch(unique("missing")) is None


def test_a_quiet_watch_gets_no_bookmark_but_ends_cleanly_which_keeps_the_cache_fresh(
    control_plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    # The reason each watch asks for a timeout below the 90 s read timeout:
    # while no namespace changes, kube-apiserver sends no bookmark at all.
    caplog.set_level(logging.DEBUG, logger="webhook.namespaces")
    offset = [0.0]  # real time, plus a jump the test makes

    def clock() -> float:
        return time.monotonic() + offset[0]

    source = KubeNamespaceCache.from_environment(
        control_plane.kubeconfig,
        in_cluster=False,
        options=NamespaceCacheOptions(watch_timeout_seconds=3),
        clock=clock,
    )
    source.start()
    try:
        assert source.wait_ready(PATIENCE)
        eventually(
            lambda: any("watching from" in r.getMessage() for r in caplog.records),
            what="the first watch",
        )
        offset[0] = 100.0  # as if the quiet spell had lasted 100 s already
        assert source.freshness().age_seconds >= 100.0
        # Nothing arrives, but the stream ends cleanly at its 3-5 s timeout.
        eventually(lambda: source.freshness().age_seconds < 100.0, what="the watch's clean end")
        assert source.freshness().reconnects >= 1
        assert not [r for r in caplog.records if "bookmark at" in r.getMessage()]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        source.stop()


def test_after_a_namespace_change_kube_apiserver_sends_bookmarks(
    control_plane: ControlPlane, cache: KubeNamespaceCache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="webhook.namespaces")
    name = unique("touched")
    control_plane.kubectl("create", "namespace", name)
    eventually(lambda: cache.cached(name) is not None, what="the ADDED event")
    # 2 s before the watch's 5-9 s timeout, now that the resource moved on.
    eventually(
        lambda: any("bookmark at resourceVersion" in r.getMessage() for r in caplog.records),
        what="a BOOKMARK",
    )
    assert cache.freshness().relists == 0
