"""Events through the app, in-process: ``/mutate`` hands every answer over once, after deciding.

The recorder is real and its writer a fake (``test_events_recorder``); the
reviews go through the whole ``/mutate`` path, so the owner is read from the
review the way the API server sends it. Also: ``serve`` makes a recorder
only where there is a cluster to write to (that choosing none imports no
Kubernetes client is asked of a fresh interpreter, in
``tests/process/test_events_imports.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from harness.threads import eventually
from tests import builders
from tests.unit.events_fakes import FakeWriter
from webhook.cluster.namespaces_file import StaticNamespaces
from webhook.engine.config import InjectorConfig
from webhook.service.admission import Reviewed
from webhook.service.app import create_app
from webhook.service.events import EventOptions, EventRecorder, NoEvents
from webhook.service.metrics import Metrics
from webhook.service.server import ServeSettings, _event_recorder

RS_REF = {
    "apiVersion": "apps/v1",
    "kind": "ReplicaSet",
    "name": "web-7d9f",
    "uid": "9a1c2f3e-0000-4000-8000-000000000001",
    "controller": True,
    "blockOwnerDeletion": True,
}
NAMESPACES = StaticNamespaces(
    {"shop": builders.enabled_namespace("shop"), "legacy": builders.namespace("legacy")}
)


def review(
    *,
    namespace: str = "shop",
    owner: dict[str, Any] | None = RS_REF,
    dry_run: bool = False,
    annotations: dict[str, str] | None = None,
    uid: str = "u-1",
) -> bytes:
    """A ReplicaSet's pod for review, its controller ``owner`` (``None``: a bare pod)."""
    metadata: dict[str, Any] = {"annotations": annotations or {}}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    pod = builders.replicaset_pod(**metadata)
    return builders.review_bytes(pod, namespace=namespace, uid=uid, dryRun=dry_run)


class Recording(NoEvents):
    """A sink that keeps what ``/mutate`` hands it."""

    def __init__(self) -> None:
        self.reviewed: list[Reviewed] = []

    def record(self, reviewed: Reviewed) -> None:
        self.reviewed.append(reviewed)


def test_mutate_hands_each_answer_over_once_with_the_pods_owner() -> None:
    sink = Recording()
    app = create_app(config=InjectorConfig(), namespaces=NAMESPACES, events=sink)
    with TestClient(app) as client:
        answer = client.post(
            "/mutate", content=review(), headers={"content-type": "application/json"}
        )
        assert answer.json()["response"]["allowed"] is True
        client.post(
            "/mutate", content=review(owner=None), headers={"content-type": "application/json"}
        )
        client.post("/mutate", content=b"{}", headers={"content-type": "application/json"})
    first, bare = sink.reviewed  # the bad request is not an admission
    owner = first.request.owner
    assert owner is not None
    assert (owner.kind, owner.name, owner.namespace, owner.uid) == (
        "ReplicaSet",
        "web-7d9f",
        "shop",
        RS_REF["uid"],
    )
    assert bare.request.owner is None


@pytest.fixture
def recorded() -> Iterator[tuple[TestClient, FakeWriter, EventRecorder]]:
    writer = FakeWriter()
    recorder = EventRecorder(writer, Metrics(), instance="r", options=EventOptions(stop_timeout=1))
    app = create_app(config=InjectorConfig(), namespaces=NAMESPACES, events=recorder)
    with TestClient(app, headers={"content-type": "application/json"}) as client:
        yield client, writer, recorder
    assert writer.closed  # the lifespan stopped the sender


def test_a_dry_run_review_makes_no_event_and_the_same_answer(
    recorded: tuple[TestClient, FakeWriter, EventRecorder],
) -> None:
    client, writer, _ = recorded
    dry = client.post("/mutate", content=review(dry_run=True)).json()["response"]
    real = client.post("/mutate", content=review(owner={**RS_REF, "name": "other"})).json()
    assert dry["patch"] == real["response"]["patch"]
    eventually(lambda: len(writer.creates) == 1, what="the create")
    assert writer.creates[0]["regarding"]["name"] == "other"


def test_a_refusal_and_a_skip_reach_the_owner_as_events(
    recorded: tuple[TestClient, FakeWriter, EventRecorder],
) -> None:
    client, writer, _ = recorded
    bad = review(annotations={"sidecar.mesh.io/proxy-cpu-request": "lots"})
    assert client.post("/mutate", content=bad).json()["response"]["allowed"] is False
    skipped = review(
        owner={**RS_REF, "name": "batch-1", "apiVersion": "batch/v1", "kind": "Job"},
        annotations={"sidecar.mesh.io/inject": "false"},
    )
    assert "patch" not in client.post("/mutate", content=skipped).json()["response"]
    quiet = review(namespace="legacy", owner={**RS_REF, "name": "not-opted-in"})
    client.post("/mutate", content=quiet)
    eventually(lambda: len(writer.creates) == 2, what="two creates")
    refused, skip = writer.creates
    assert refused["reason"] == "InjectionRefused"
    assert "sidecar.mesh.io/proxy-cpu-request" in refused["note"]
    assert skip["reason"] == "InjectionSkipped"
    assert skip["regarding"]["kind"] == "Job"
    assert skip["note"] == "not injected: pod annotation sidecar.mesh.io/inject=false"


# --- where serve writes them ------------------------------------------------------------


def test_serve_writes_no_events_with_a_namespaces_file_or_without_a_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setattr("webhook.service.server.running_in_cluster", lambda: False)
    without = ServeSettings()
    assert _event_recorder(without, Metrics()) is None
    kubeconfig = tmp_path / "kubeconfig"
    with_file = ServeSettings(namespaces_file=tmp_path / "ns.yaml", kubeconfig=kubeconfig)
    assert _event_recorder(with_file, Metrics()) is None


def test_serve_writes_events_to_the_cluster_its_kubeconfig_names(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    recorder = _event_recorder(ServeSettings(kubeconfig=kubeconfig), Metrics())
    assert isinstance(recorder, EventRecorder)
    recorder.stop()
