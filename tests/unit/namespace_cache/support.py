"""What the namespace cache's tests share: shrunk timings, a fake clock, and log readers."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest

from harness.fake_kube_api import FakeKubeAPI
from harness.threads import eventually
from webhook.cluster.namespace_cache import KubeNamespaceCache, NamespaceCacheOptions

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
