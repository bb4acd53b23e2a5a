"""The parts of ``why`` alone: ``KIND/NAME``, label selectors, the pods a workload owns, versions.

The cluster is an in-memory stand-in with the two methods ``read`` uses
(``get`` and ``list``), so each kind's way to its pods is checked without
HTTP (``test_why_cli`` runs the whole command over HTTP).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from webhook.cluster.reader import ClusterError
from webhook.ops.why.read import image_version, read_pods, selector_text
from webhook.ops.why.target import KINDS, TargetError, parse_target


class MemoryCluster:
    """Objects by collection path; ``list`` answers with a collection's items (no selectors)."""

    host = "memory"

    def __init__(self, collections: Mapping[str, list[dict[str, Any]]]) -> None:
        self.collections = collections
        self.queries: list[tuple[str, Mapping[str, str] | None]] = []

    def get(self, path: str, *, metadata_only: bool = False) -> dict[str, Any] | None:
        del path, metadata_only
        return None

    def list(
        self, path: str, *, query: Mapping[str, str] | None = None, **_: Any
    ) -> Iterator[dict[str, Any]]:
        self.queries.append((path, query))
        if path not in self.collections:
            raise ClusterError("HTTP 403: forbidden", status=403)
        yield from self.collections[path]


def owned(name: str, owner_uid: str | None, *, uid: str | None = None) -> dict[str, Any]:
    refs = [] if owner_uid is None else [{"kind": "X", "uid": owner_uid, "controller": True}]
    return {"metadata": {"name": name, "uid": uid or f"{name}-uid", "ownerReferences": refs}}


# --- KIND/NAME --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("po/web-0", "Pod"),
        ("pods/web-0", "Pod"),
        ("deploy/web", "Deployment"),
        ("Deployment/web", "Deployment"),
        ("deployments.apps/web", "Deployment"),
        ("sts/db", "StatefulSet"),
        ("ds/agent", "DaemonSet"),
        ("rs/web-7d9f", "ReplicaSet"),
        ("job/once", "Job"),
        ("jobs.batch/once", "Job"),
        ("cj/nightly", "CronJob"),
    ],
)
def test_kinds_are_spelled_as_kubectl_spells_them(text: str, kind: str) -> None:
    target = parse_target(text, "shop")
    assert target.kind.kind == kind
    assert target.namespace == "shop"
    assert str(target) == f"{kind.lower()}/{text.split('/', 1)[1]}"


def test_each_kind_reads_from_its_api_group() -> None:
    paths = {kind.kind: kind.path("shop", "x") for kind in KINDS}
    assert paths == {
        "Pod": "/api/v1/namespaces/shop/pods/x",
        "Deployment": "/apis/apps/v1/namespaces/shop/deployments/x",
        "StatefulSet": "/apis/apps/v1/namespaces/shop/statefulsets/x",
        "DaemonSet": "/apis/apps/v1/namespaces/shop/daemonsets/x",
        "ReplicaSet": "/apis/apps/v1/namespaces/shop/replicasets/x",
        "Job": "/apis/batch/v1/namespaces/shop/jobs/x",
        "CronJob": "/apis/batch/v1/namespaces/shop/cronjobs/x",
    }


@pytest.mark.parametrize(
    "text",
    ["web", "service/web", "deploy/UPPER", "deploy/a/b", "deploy/" + "a" * 254, "pods.apps/x",
     "deploy/\x1b[2J"],
)  # fmt: skip
def test_what_names_nothing_why_explains_is_refused(text: str) -> None:
    with pytest.raises(TargetError) as refused:
        parse_target(text, "shop")
    assert "\x1b" not in str(refused.value)
    assert len(str(refused.value)) < 300


# --- label selectors --------------------------------------------------------------------


def test_a_label_selector_becomes_the_query_the_api_server_takes() -> None:
    selector = {
        "matchLabels": {"app": "web", "tier": "front"},
        "matchExpressions": [
            {"key": "track", "operator": "In", "values": ["stable", "canary"]},
            {"key": "legacy", "operator": "NotIn", "values": ["yes"]},
            {"key": "owned", "operator": "Exists"},
            {"key": "debug", "operator": "DoesNotExist"},
        ],
    }
    assert selector_text(selector) == (
        "app=web,tier=front,track in (stable,canary),legacy notin (yes),owned,!debug"
    )
    assert selector_text({}) is None
    assert selector_text(None) is None


# --- the pods of each kind --------------------------------------------------------------


def test_a_deployments_pods_are_those_of_the_replicasets_it_controls() -> None:
    target = parse_target("deploy/web", "shop")
    deployment = {"metadata": {"uid": "d"}, "spec": {"selector": {"matchLabels": {"app": "web"}}}}
    cluster = MemoryCluster(
        {
            "/apis/apps/v1/namespaces/shop/replicasets": [
                owned("web-1", "d"),
                owned("web-2", "d"),
                owned("stranger", "other"),
            ],
            "/api/v1/namespaces/shop/pods": [
                owned("web-1-a", "web-1-uid"),
                owned("web-2-a", "web-2-uid"),
                owned("stranger-a", "stranger-uid"),
                owned("bare", None),
            ],
        }
    )
    pods = read_pods(cluster, target, deployment)  # type: ignore[arg-type]
    assert [p["metadata"]["name"] for p in pods.items] == ["web-1-a", "web-2-a"]
    assert pods.complete
    assert pods.owners == (("ReplicaSet", "web-1"), ("ReplicaSet", "web-2"))
    assert cluster.queries[0] == (
        "/apis/apps/v1/namespaces/shop/replicasets",
        {"labelSelector": "app=web"},
    )


def test_a_cronjobs_pods_are_those_of_its_jobs() -> None:
    target = parse_target("cj/nightly", "shop")
    cluster = MemoryCluster(
        {
            "/apis/batch/v1/namespaces/shop/jobs": [owned("nightly-1", "c"), owned("other", "x")],
            "/api/v1/namespaces/shop/pods": [
                owned("nightly-1-a", "nightly-1-uid"),
                owned("o", "other-uid"),
            ],
        }
    )
    pods = read_pods(cluster, target, {"metadata": {"uid": "c"}, "spec": {}})  # type: ignore[arg-type]
    assert [p["metadata"]["name"] for p in pods.items] == ["nightly-1-a"]
    assert cluster.queries == [
        ("/apis/batch/v1/namespaces/shop/jobs", None),
        ("/api/v1/namespaces/shop/pods", None),
    ]


@pytest.mark.parametrize("text", ["sts/db", "ds/agent", "rs/web-1", "job/once"])
def test_other_workloads_own_their_pods_directly(text: str) -> None:
    target = parse_target(text, "shop")
    cluster = MemoryCluster(
        {"/api/v1/namespaces/shop/pods": [owned("mine", "w"), owned("theirs", "z")]}
    )
    obj = {"metadata": {"uid": "w"}, "spec": {"selector": {"matchLabels": {"a": "b"}}}}
    pods = read_pods(cluster, target, obj)  # type: ignore[arg-type]
    assert [p["metadata"]["name"] for p in pods.items] == ["mine"]


def test_a_pod_is_its_own_pod() -> None:
    pod = {"metadata": {"name": "web-0"}}
    assert read_pods(MemoryCluster({}), parse_target("po/web-0", "shop"), pod).items == (pod,)  # type: ignore[arg-type]


def test_pods_that_cannot_be_listed_are_a_note_not_an_error() -> None:
    target = parse_target("sts/db", "shop")
    pods = read_pods(MemoryCluster({}), target, {"metadata": {"uid": "w"}})  # type: ignore[arg-type]
    assert pods.items == ()
    assert not pods.complete
    assert pods.note == "cannot list its pods: HTTP 403: forbidden"


def test_at_most_500_pods_are_examined_and_the_answer_says_so() -> None:
    target = parse_target("ds/agent", "shop")
    many = [owned(f"agent-{i}", "w") for i in range(700)]
    cluster = MemoryCluster({"/api/v1/namespaces/shop/pods": many})
    pods = read_pods(cluster, target, {"metadata": {"uid": "w"}})  # type: ignore[arg-type]
    assert len(pods.items) == 500
    assert not pods.complete
    assert pods.note == "only the first 500 pods were examined"


# --- the injector's version ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("ghcr.io/sidecar-injector/webhook:0.1.0", "0.1.0"),
        ("registry:5000/webhook:v1.2.3", "1.2.3"),
        ("ghcr.io/sidecar-injector/webhook:0.2.0-rc.1@sha256:abc", "0.2.0-rc.1"),
        ("ghcr.io/sidecar-injector/webhook:latest", None),
        ("registry:5000/webhook", None),
    ],
)
def test_the_injectors_version_is_its_image_tag_when_that_is_a_version(
    image: str, version: str | None
) -> None:
    deployment = {"spec": {"template": {"spec": {"containers": [{"image": image}]}}}}
    assert image_version(deployment) == version
