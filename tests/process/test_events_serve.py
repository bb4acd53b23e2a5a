"""A real ``serve`` writing Events to an API server that hangs, refuses or answers.

The process is the one users run (TLS, uvicorn, the lifespan, the sender's
thread), its namespace source and its Events both pointed at the fake API
server by ``--kubeconfig``. That admissions never wait for the Events API is
shown without a clock: while the fake holds the first write unanswered,
hundreds of admissions are answered, and no write has completed.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.fake_kube_api import EventStore, FakeKubeAPI
from harness.fake_kube_api.events import PREFIX as EVENTS
from harness.server import Server, WebhookClient, running_server
from harness.threads import eventually
from harness.tls_client import https_get
from tests.builders import replicaset_pod, review_bytes

# Long enough for a loaded machine; the sender writes a series count at most
# every 10 s, so waits for a count allow for that.
PATIENCE = 60.0


def pod_review(owner: str, *, uid: str = "u-1", dry_run: bool = False) -> bytes:
    """A ReplicaSet's pod as the API server sends it for review."""
    reference = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": owner,
        "uid": f"uid-{owner}",
        "controller": True,
    }
    pod = replicaset_pod(generateName=f"{owner}-", ownerReferences=[reference])
    return review_bytes(pod, namespace="shop", uid=uid, dryRun=dry_run)


def injected(client: WebhookClient, body: bytes) -> bool:
    answer = client.post("/mutate", body)
    assert answer.status_code == 200
    response = answer.json()["response"]
    return bool(response["allowed"] and "patch" in response)


def events_total(server: Server, outcome: str, reason: str = "Injected") -> float:
    """``sidecar_injector_events_total`` for one reason and outcome, from ``/metrics``."""
    _, text, _ = https_get(server.port, server.ca_file, "/metrics", timeout=30)
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == "sidecar_injector_events_total" and sample.labels == {
                "reason": reason,
                "outcome": outcome,
            }:
                return float(sample.value)
    return 0.0


@pytest.fixture
def api(fake_api: FakeKubeAPI) -> EventStore:
    """The fake API server's Events API; ``shop`` opted in among its namespaces."""
    store = EventStore()
    fake_api.route(EVENTS, store)
    fake_api.add("shop", {"sidecar-injection": "enabled"})
    return store


@pytest.fixture
def server(tmp_path: Path, fake_api: FakeKubeAPI, api: EventStore) -> Iterator[Server]:
    kubeconfig = fake_api.write_kubeconfig(tmp_path / "kubeconfig")
    with running_server(tmp_path, args=["--kubeconfig", str(kubeconfig)]) as running:
        yield running


def test_admissions_are_answered_while_the_events_api_hangs(
    fake_api: FakeKubeAPI, api: EventStore, server: Server
) -> None:
    client = server.client()
    api.hold = True
    assert injected(client, pod_review("first"))
    eventually(lambda: api.held == 1, what="the first write to be held", timeout=PATIENCE)

    for index in range(300):
        assert injected(client, pod_review(f"rs-{index % 20}", uid=f"u-{index}"))
        assert injected(client, pod_review("first", uid=f"v-{index}"))

    # Every write is held until released: none has been answered, all 601
    # admissions were. The one sender thread gives a held write up after its
    # write timeout and goes on to the next, held in its turn, so how many
    # are waiting depends on how long the admissions took, not on them.
    assert api.held >= 1
    assert api.events == {}

    fake_api.release()
    # Each occurrence ends sent, or failed when a write timed out meanwhile.
    eventually(
        lambda: events_total(server, "sent") + events_total(server, "failed") == 601,
        what="every occurrence written or failed",
        timeout=PATIENCE,
    )
    assert events_total(server, "sent") > 0
    assert events_total(server, "dropped") == 0
    # One Event per owner (a second one only after a failed write): never one per pod.
    assert 1 <= len(api.events) <= 2 * 21


def test_a_dry_run_makes_no_event(api: EventStore, server: Server) -> None:
    client = server.client()
    assert injected(client, pod_review("dry", dry_run=True))
    assert injected(client, pod_review("real"))
    eventually(lambda: len(api.events) == 1, what="the real one's Event", timeout=PATIENCE)
    assert [e["regarding"]["name"] for e in api.events.values()] == ["real"]


def test_events_the_api_server_refuses_are_counted_failed(api: EventStore, server: Server) -> None:
    api.refuse(403, "events are refused here")
    client = server.client()
    for index in range(5):
        assert injected(client, pod_review(f"rs-{index}"))
    eventually(lambda: events_total(server, "failed") == 5, what="the failures", timeout=PATIENCE)
    server.wait_for_log("could not create the Injected Event for ReplicaSet shop/rs-0")
    assert api.events == {}


def test_a_full_queue_drops_and_counts_and_serve_stops_without_waiting_for_a_hung_api(
    tmp_path: Path, fake_api: FakeKubeAPI, api: EventStore
) -> None:
    kubeconfig = fake_api.write_kubeconfig(tmp_path / "kubeconfig")
    args = ["--kubeconfig", str(kubeconfig), "--drain-seconds", "0"]
    with running_server(tmp_path, args=args) as server:
        client = server.client()
        api.hold = True
        distinct = 2048 + 100
        for index in range(distinct):
            assert injected(client, pod_review(f"rs-{index}", uid=f"u-{index}"))
        assert api.events == {}
        pending = server.metrics()["sidecar_injector_events_pending"]
        dropped, failed = events_total(server, "dropped"), events_total(server, "failed")
        # The queue holds 2,048 series; a write given up (its timeout) frees one place.
        assert pending <= 2048
        assert dropped >= 100 - failed
        assert pending + dropped + failed == distinct

        client.http.close()  # nothing to wait for but the Events
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
    assert re.search(r"\d+ event occurrences were not written before stopping", server.log())
