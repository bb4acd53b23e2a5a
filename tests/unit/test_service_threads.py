"""Big reviews are worked on in a worker thread, small ones on the event loop; same answers.

The engine walks every annotation and container in Python; on the event loop
a review of a few MB held up every other admission (docs/testing.md). Over
``Limits.thread_body_bytes`` the review is decoded, injected and encoded in
a worker thread instead, so the loop keeps its turns. Nothing a client sees
may depend on where it ran. No wall time is measured here: where the work
ran is observed from inside it (the namespace lookup admission makes).
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.builders import enabled_namespace, replicaset_pod, review_bytes
from webhook.cluster.namespaces_file import NamespaceInfo, StaticNamespaces
from webhook.engine.config import InjectorConfig
from webhook.service import admission
from webhook.service.app import create_app
from webhook.service.limits import Limits

# The module, not the function the package exports under the same name.
inject_module = importlib.import_module("webhook.engine.inject")


class RecordingNamespaces(StaticNamespaces):
    """A static source whose cache knows only ``demo`` (``late`` must be fetched).

    Records, for each cache lookup, whether it ran on a thread with a running
    event loop: admission looks the namespace up in the middle of its work.
    """

    def __init__(self) -> None:
        super().__init__({"demo": enabled_namespace("demo"), "late": enabled_namespace("late")})
        self.on_loop: list[bool] = []

    def cached(self, name: str) -> NamespaceInfo | None:
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        return super().cached(name) if name == "demo" else None


def padded_review(uid: str, *, namespace: str = "demo", padding: int = 0, **pod_meta: Any) -> bytes:
    """A pod CREATE; ``padding`` bytes of an unrelated annotation make it big."""
    annotations = dict(pod_meta.pop("annotations", {}))
    if padding:
        annotations["example.com/notes"] = "x" * padding
    if annotations:
        pod_meta["annotations"] = annotations
    return review_bytes(replicaset_pod(**pod_meta), uid=uid, namespace=namespace)


THRESHOLD = Limits().thread_body_bytes


def client_with(source: RecordingNamespaces, **limits: Any) -> TestClient:
    app = create_app(config=InjectorConfig(), namespaces=source, limits=Limits(**limits))
    return TestClient(app)


@pytest.fixture
def source() -> RecordingNamespaces:
    return RecordingNamespaces()


def post(client: TestClient, body: bytes) -> Any:
    return client.post("/mutate", content=body, headers={"Content-Type": "application/json"})


def test_a_review_over_the_threshold_is_worked_on_off_the_loop_a_small_one_on_it(
    source: RecordingNamespaces,
) -> None:
    client = client_with(source)
    small = padded_review("small")
    big = padded_review("big", padding=THRESHOLD)
    assert len(small) <= THRESHOLD < len(big)

    assert post(client, small).status_code == 200
    assert source.on_loop == [True]
    answer = post(client, big)
    assert answer.status_code == 200
    assert "patch" in answer.json()["response"]
    assert source.on_loop == [True, False]


def test_a_review_at_the_threshold_stays_on_the_loop(source: RecordingNamespaces) -> None:
    body = padded_review("edge", padding=THRESHOLD)
    client = client_with(source, thread_body_bytes=len(body))
    assert post(client, body).status_code == 200
    assert source.on_loop == [True]


BODIES = {
    "injected": padded_review("a"),
    "big injected": padded_review("b", padding=200_000),
    "not enabled": padded_review("c", namespace="other"),
    "fetched namespace": padded_review("d", namespace="late"),
    "big fetched namespace": padded_review("e", namespace="late", padding=100_000),
    "opted in, fetched": padded_review(
        "f", namespace="other", annotations={"sidecar.mesh.io/inject": "true"}
    ),
    "refused": padded_review("g", annotations={"sidecar.mesh.io/proxy-cpu-request": "lots"}),
    "update": orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1beta1",
            "kind": "AdmissionReview",
            "request": {"uid": "h", "operation": "UPDATE", "object": {"padding": "x" * 90_000}},
        }
    ),
    "bad envelope": orjson.dumps({"apiVersion": "v1", "kind": "Pod", "padding": "x" * 90_000}),
    "not json": b"{" + b" " * 90_000,
}


@pytest.fixture(scope="module")
def both_ways() -> tuple[TestClient, TestClient]:
    on_loop = client_with(RecordingNamespaces(), thread_body_bytes=10**9)
    in_thread = client_with(RecordingNamespaces(), thread_body_bytes=0)
    return on_loop, in_thread


@pytest.mark.parametrize("case", sorted(BODIES))
def test_answers_are_byte_identical_on_the_loop_and_in_a_thread(
    both_ways: tuple[TestClient, TestClient], case: str
) -> None:
    on_loop, in_thread = both_ways
    first = post(on_loop, BODIES[case])
    second = post(in_thread, BODIES[case])
    assert first.status_code == second.status_code
    assert first.content == second.content
    assert dict(first.headers) == dict(second.headers)
    assert first.status_code in (200, 400)


def test_a_pod_in_a_namespace_not_yet_cached_is_injected_once_not_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before the read the engine only decides (as for a ``disabled`` namespace); after, it injects.

    The pod opts in itself, so before this it was injected in full against
    an unlabelled namespace, thrown away, and injected again after the read.
    """
    resolved: list[str] = []
    real = inject_module.resolve_settings

    def counting(*args: Any, **kwargs: Any) -> Any:
        resolved.append("once")
        return real(*args, **kwargs)

    monkeypatch.setattr(inject_module, "resolve_settings", counting)

    class Lookup:
        def __init__(self) -> None:
            self.fetched: list[str] = []

        def cached(self, _name: str) -> NamespaceInfo | None:
            return None

        async def fetch(self, name: str, *, reason: str) -> NamespaceInfo | None:
            self.fetched.append(reason)
            return NamespaceInfo(name)

    lookup = Lookup()
    body = padded_review(
        "opt-in", namespace="fresh", annotations={"sidecar.mesh.io/inject": "true"}
    )
    reviewed = asyncio.run(admission.admit(body, namespaces=lookup, config=InjectorConfig()))
    assert reviewed.code == "pod-opted-in"
    assert "patch" in reviewed.response
    assert lookup.fetched == ["miss"]
    assert resolved == ["once"]
