"""Backoff and log volume when the API server misbehaves, and how fresh the cache says it is."""

from __future__ import annotations

import logging

import pytest

from harness.fake_kube_api import FakeKubeAPI
from harness.threads import PATIENCE, eventually
from tests.unit.namespace_cache.support import (
    CacheFactory,
    FakeClock,
    cache_log,
    failures,
    flap,
    retries,
    warnings_in,
)
from webhook.cluster.namespace_cache import KubeNamespaceCache
from webhook.cluster.namespaces_file import (
    Freshness,
)

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
