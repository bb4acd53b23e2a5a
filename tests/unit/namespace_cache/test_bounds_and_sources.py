"""Memory bounds on lists, events and the store; stopping; choosing a namespace source."""

from __future__ import annotations

import ast
import json
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.fake_kube_api import FakeKubeAPI
from harness.threads import PATIENCE, eventually
from tests.builders import REPO
from tests.unit.namespace_cache.support import (
    CacheFactory,
    failures,
    warnings_in,
)
from webhook.cluster import namespace_cache as kube_namespaces
from webhook.cluster.namespace_cache import KubeNamespaceCache, store
from webhook.cluster.namespaces_file import (
    FileNamespaces,
    NamespaceInfo,
    NamespaceSourceError,
    StaticNamespaces,
)
from webhook.service.server import namespace_source_from_args

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
