"""Fixtures for the watch-backed namespace cache against a real HTTP server speaking list/watch.

The official ``kubernetes`` client's configuration and connection pool make
real requests to ``FakeKubeAPI``; no part of the client is patched. Timing
parameters are shrunk so the whole file runs in seconds. Nothing sleeps for a
fixed time and nothing is timed against a threshold: waits poll for what the
cache or the server reports, with generous deadlines, and the cache's clock
(used for ages, backoff resets and log throttling) is a fake one that moves
only when a test moves it.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from harness.fake_kube_api import FakeKubeAPI
from harness.threads import PATIENCE
from tests.unit.namespace_cache.support import (
    FAST,
    CacheFactory,
    FakeClock,
)
from webhook.cluster.namespace_cache import KubeNamespaceCache


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
