"""The Event sender with a fake writer: off the request path, bounded, rate-limited, counted.

The recorder's thread is real; the writer is an in-memory fake that can hang
or fail. No fixed sleeps: tests wait for what the writer received, and
rates are chosen so that what must not happen cannot (a bucket that refills
once an hour) rather than being waited for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from harness.threads import eventually
from tests.unit.events_fakes import FakeWriter, WriteFailed
from webhook.service.admission import RequestSummary, Reviewed
from webhook.service.events import EventOptions, EventRecorder
from webhook.service.events.model import Owner
from webhook.service.metrics import Metrics

HOUR = 3600.0


def _reviewed(
    owner: str | None = "web-7d9f",
    *,
    code: str = "namespace-enabled",
    allowed: bool = True,
    patched: bool = True,
    reason: str = "namespace shop is labelled sidecar-injection=enabled",
    dry_run: bool = False,
) -> Reviewed:
    response: dict[str, Any] = {"uid": "u", "allowed": allowed}
    if patched:
        response["patch"] = "W10="
    summary = RequestSummary(
        uid="u",
        namespace="shop",
        name=f"{owner}-",
        operation="CREATE",
        dry_run=dry_run,
        owner=None if owner is None else Owner("apps/v1", "ReplicaSet", owner, "shop", "uid"),
    )
    review: Any = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}
    review["response"] = response
    return Reviewed(review, code, reason, summary, b"")


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _outcomes(metrics: Metrics, reason: str = "Injected") -> dict[str, float]:
    return {
        outcome: _sample(metrics, "sidecar_injector_events_total", reason=reason, outcome=outcome)
        for outcome in ("sent", "failed", "dropped")
    }


@pytest.fixture
def writer() -> FakeWriter:
    return FakeWriter()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def recorder(writer: FakeWriter, metrics: Metrics) -> Iterator[EventRecorder]:
    made = EventRecorder(
        writer,
        metrics,
        instance="replica-a",
        options=EventOptions(flush=HOUR, stop_timeout=1.0),
    )
    made.start()
    try:
        yield made
    finally:
        writer.gate.set()
        made.stop()


# --- what is written --------------------------------------------------------------------


def test_an_injected_pod_of_a_replicaset_creates_an_injected_event_on_it(
    recorder: EventRecorder, writer: FakeWriter, metrics: Metrics
) -> None:
    recorder.record(_reviewed())
    eventually(lambda: len(writer.creates) == 1, what="the create")
    event = writer.creates[0]
    assert event["reason"] == "Injected"
    assert event["type"] == "Normal"
    assert event["regarding"]["kind"] == "ReplicaSet"
    assert event["regarding"]["name"] == "web-7d9f"
    assert event["reportingInstance"] == "replica-a"
    assert event["note"] == (
        "mesh-proxy and mesh-init injected: namespace shop is labelled sidecar-injection=enabled"
    )
    eventually(lambda: _outcomes(metrics)["sent"] == 1, what="the count")
    assert writer.timeouts == [EventOptions().write_timeout]


def test_a_thousand_pods_make_one_event_whose_series_counts_them_all(
    recorder: EventRecorder, writer: FakeWriter, metrics: Metrics
) -> None:
    recorder.record(_reviewed())
    eventually(lambda: len(writer.creates) == 1, what="the create")
    for _ in range(999):
        recorder.record(_reviewed())
    recorder.stop()  # the pending series count is written on the way out
    assert len(writer.creates) == 1
    assert len(writer.patches) == 1
    assert writer.patches[0][1] == writer.creates[0]["metadata"]["name"]
    assert writer.last_count() == 1000
    assert _outcomes(metrics) == {"sent": 1000, "failed": 0, "dropped": 0}
    assert _sample(metrics, "sidecar_injector_event_writes_total", verb="create", result="ok") == 1
    assert _sample(metrics, "sidecar_injector_event_writes_total", verb="patch", result="ok") == 1


def test_series_counts_are_written_at_most_once_per_flush_interval(
    writer: FakeWriter, metrics: Metrics
) -> None:
    recorder = EventRecorder(
        writer, metrics, instance="r", options=EventOptions(flush=0.05, stop_timeout=5.0)
    )
    recorder.start()
    try:
        recorder.record(_reviewed())
        eventually(lambda: len(writer.creates) == 1, what="the create")
        recorder.record(_reviewed())
        eventually(lambda: writer.patches != [], what="the series count")
        assert writer.last_count() == 2
    finally:
        recorder.stop()


def test_dry_runs_bare_pods_and_reviews_worth_nothing_are_not_recorded(
    recorder: EventRecorder, writer: FakeWriter, metrics: Metrics
) -> None:
    recorder.record(_reviewed("dry", dry_run=True))
    recorder.record(_reviewed(None))
    recorder.record(_reviewed("quiet", code="not-enabled", patched=False))
    recorder.record(_reviewed("last"))
    # Creates go oldest first: had anything before been recorded, it came first.
    eventually(lambda: len(writer.creates) == 1, what="the create")
    assert [e["regarding"]["name"] for e in writer.creates] == ["last"]
    assert _sample(metrics, "sidecar_injector_events_pending") == 0


def test_skips_and_refusals_are_their_own_events(
    recorder: EventRecorder, writer: FakeWriter
) -> None:
    recorder.record(_reviewed("a", code="host-network", patched=False, reason="host network"))
    message = "pod annotation sidecar.mesh.io/log-level='loud' is invalid"
    recorder.record(_reviewed("b", code="refused", allowed=False, patched=False, reason=message))
    eventually(lambda: len(writer.creates) == 2, what="both creates")
    skipped, refused = writer.creates
    assert (skipped["reason"], skipped["type"]) == ("InjectionSkipped", "Normal")
    assert skipped["note"] == "not injected: host network"
    assert (refused["reason"], refused["type"]) == ("InjectionRefused", "Warning")
    assert refused["note"] == message


# --- off the request path ---------------------------------------------------------------


def test_recording_never_waits_for_a_writer_that_hangs(
    recorder: EventRecorder, writer: FakeWriter, metrics: Metrics
) -> None:
    writer.gate.clear()
    recorder.record(_reviewed("first"))
    assert writer.entered.acquire(timeout=10)  # the sender is stuck in its write
    # Were the lock held across the write, these would block until the gate opens.
    for index in range(2000):
        recorder.record(_reviewed(f"owner-{index % 50}"))
    assert _sample(metrics, "sidecar_injector_events_pending") == 2001
    writer.gate.set()
    eventually(lambda: len(writer.creates) == 26, what="the burst of creates")


def test_a_full_queue_drops_new_series_and_counts_them(
    writer: FakeWriter, metrics: Metrics
) -> None:
    recorder = EventRecorder(
        writer, metrics, instance="r", options=EventOptions(max_series=3, stop_timeout=0.2)
    )
    writer.gate.clear()
    recorder.start()
    try:
        for name in ("a", "b", "c"):
            recorder.record(_reviewed(name))
        assert writer.entered.acquire(timeout=10)
        recorder.record(_reviewed("d"))
        recorder.record(_reviewed("a"))  # a repeat needs no new room
        assert _outcomes(metrics)["dropped"] == 1
        assert _sample(metrics, "sidecar_injector_events_pending") == 4
    finally:
        writer.gate.set()
        recorder.stop()


def test_the_token_bucket_lets_a_burst_through_then_holds_the_rest(
    writer: FakeWriter, metrics: Metrics
) -> None:
    # One token an hour: after the burst of three, nothing more can be sent.
    options = EventOptions(rate=1 / HOUR, burst=3, stop_timeout=0.2)
    recorder = EventRecorder(writer, metrics, instance="r", options=options)
    recorder.start()
    for index in range(10):
        recorder.record(_reviewed(f"owner-{index}"))
    eventually(lambda: len(writer.creates) == 3, what="the burst")
    assert [e["regarding"]["name"] for e in writer.creates] == ["owner-0", "owner-1", "owner-2"]
    recorder.stop()
    assert len(writer.creates) == 3
    assert _outcomes(metrics) == {"sent": 3, "failed": 0, "dropped": 7}
    assert _sample(metrics, "sidecar_injector_events_pending") == 0


# --- failures ---------------------------------------------------------------------------


def test_failed_writes_are_counted_and_logged_at_most_once_a_minute(
    recorder: EventRecorder,
    writer: FakeWriter,
    metrics: Metrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer.failure = WriteFailed("HTTP 403: events.events.k8s.io is forbidden")
    with caplog.at_level(logging.WARNING, logger="webhook.events"):
        for index in range(5):
            recorder.record(_reviewed(f"owner-{index}"))
        eventually(lambda: _outcomes(metrics)["failed"] == 5, what="five failures")
    lines = [r.getMessage() for r in caplog.records if r.name == "webhook.events"]
    assert lines == [
        "could not create the Injected Event for ReplicaSet shop/owner-0: "
        "HTTP 403: events.events.k8s.io is forbidden"
    ]
    assert (
        _sample(metrics, "sidecar_injector_event_writes_total", verb="create", result="error") == 5
    )


def test_an_event_that_expired_is_created_again_with_the_whole_count(
    writer: FakeWriter, metrics: Metrics
) -> None:
    recorder = EventRecorder(
        writer, metrics, instance="r", options=EventOptions(flush=0.05, stop_timeout=5.0)
    )
    recorder.start()
    try:
        recorder.record(_reviewed())
        eventually(lambda: len(writer.creates) == 1, what="the create")
        writer.patch_failure = WriteFailed("HTTP 404: gone", not_found=True)
        recorder.record(_reviewed())
        eventually(lambda: len(writer.creates) == 2, what="the second create")
        assert len(writer.timeouts) == 3  # create, the patch that found nothing, create
        assert writer.creates[1]["series"]["count"] == 2
        assert writer.creates[1]["metadata"]["name"] != writer.creates[0]["metadata"]["name"]
        assert _outcomes(metrics) == {"sent": 2, "failed": 0, "dropped": 0}
    finally:
        recorder.stop()


def test_stopping_gives_pending_writes_a_bounded_time_then_drops_them(
    writer: FakeWriter, metrics: Metrics
) -> None:
    recorder = EventRecorder(writer, metrics, instance="r", options=EventOptions(stop_timeout=0.2))
    writer.gate.clear()
    recorder.start()
    recorder.record(_reviewed("a"))
    assert writer.entered.acquire(timeout=10)
    recorder.record(_reviewed("b"))
    recorder.stop()  # returns although the write in flight never ends
    assert writer.closed
    assert _outcomes(metrics)["dropped"] == 2
    assert writer.timeouts == [EventOptions().write_timeout]
    writer.gate.set()


def test_writes_made_while_stopping_get_only_the_time_left(
    writer: FakeWriter, metrics: Metrics
) -> None:
    recorder = EventRecorder(writer, metrics, instance="r", options=EventOptions(stop_timeout=3.0))
    writer.gate.clear()
    recorder.start()
    recorder.record(_reviewed("a"))
    assert writer.entered.acquire(timeout=10)
    recorder.record(_reviewed("b"))
    stopping = threading.Thread(target=recorder.stop)
    stopping.start()
    eventually(lambda: recorder.stopping, what="the stop")
    writer.gate.set()
    stopping.join(30)
    assert [e["regarding"]["name"] for e in writer.creates] == ["a", "b"]
    assert writer.timeouts[0] == EventOptions().write_timeout
    assert writer.timeouts[1] <= 3.0


def test_every_occurrence_ends_sent_failed_or_dropped(writer: FakeWriter, metrics: Metrics) -> None:
    recorder = EventRecorder(
        writer, metrics, instance="r", options=EventOptions(max_series=4, stop_timeout=0.5)
    )
    recorder.start()
    for index in range(40):
        recorder.record(_reviewed(f"owner-{index % 7}"))
        if index == 20:
            writer.failure = WriteFailed("HTTP 500")
    recorder.stop()
    outcomes = _outcomes(metrics)
    assert sum(outcomes.values()) == 40, outcomes
    assert _sample(metrics, "sidecar_injector_events_pending") == 0
