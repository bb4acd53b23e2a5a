"""The install's permissions and network policy: what ``/preview`` in a cluster needs, no more.

The injector's ServiceAccount reads Namespaces (the watch-backed cache) and,
through the built-in ``system:auth-delegator``, creates TokenReviews and
SubjectAccessReviews (who is calling ``/preview``, and may they get the
namespace). The NetworkPolicy admits ingress to the injector's pods on their
serving port only, which carries the webhook and ``/metrics`` alike. Rendered
by ``kubectl kustomize`` as in ``test_manifests.py``; schema validity is
checked there for every object, these two kinds included.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tests.process.manifest_objects import (
    MANIFESTS,
    Object,
    all_of,
    injector_container,
    kustomize,
    one,
    selects,
)


@pytest.fixture(scope="module")
def base() -> list[Object]:
    return kustomize(MANIFESTS)


# --- RBAC ----------------------------------------------------------------------------


def _binding_to(objects: Sequence[Object], role: str) -> Object:
    (found,) = [
        obj
        for obj in all_of(objects, "ClusterRoleBinding")
        if obj["roleRef"]
        == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}
    ]
    return found


def test_rbac_grants_exactly_namespace_reads_and_event_writes_to_the_injector(
    base: list[Object],
) -> None:
    role = one(base, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
        # Events in series, as client-go writes them: create, then patch the count.
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    assert not all_of(base, "Role")
    assert not all_of(base, "RoleBinding")
    binding = _binding_to(base, role["metadata"]["name"])
    account = one(base, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]


def test_the_injector_may_review_tokens_and_access_for_preview_and_nothing_more(
    base: list[Object],
) -> None:
    # system:auth-delegator is built in: create on tokenreviews and
    # subjectaccessreviews, which /preview asks the API server in a cluster.
    delegator = _binding_to(base, "system:auth-delegator")
    account = one(base, "ServiceAccount")["metadata"]
    assert delegator["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    roles = {obj["roleRef"]["name"] for obj in all_of(base, "ClusterRoleBinding")}
    assert roles == {one(base, "ClusterRole")["metadata"]["name"], "system:auth-delegator"}


# --- the NetworkPolicy ---------------------------------------------------------------


def test_the_network_policy_admits_ingress_to_the_injector_on_its_serving_ports_only(
    base: list[Object],
) -> None:
    policy = one(base, "NetworkPolicy")["spec"]
    pod_labels = one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["podSelector"], pod_labels)
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    # From anywhere (the apiserver's address depends on the cluster), to the
    # container's named ports and no other: the webhook's and /metrics', one port.
    assert "from" not in rule
    container_ports = {p["name"]: p["containerPort"] for p in injector_container(base)["ports"]}
    assert container_ports == {"https": 8443}
    assert rule["ports"] == [{"protocol": "TCP", "port": name} for name in container_ports]
    # What must get through does: the webhooks' Service port and the probes.
    (service_port,) = one(base, "Service")["spec"]["ports"]
    assert service_port["targetPort"] in container_ports
    for probe in ("readinessProbe", "livenessProbe"):
        assert injector_container(base)[probe]["httpGet"]["port"] in container_ports


def test_the_network_policy_selects_no_other_pods_of_the_namespace(base: list[Object]) -> None:
    policy = one(base, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == one(base, "Deployment")["metadata"]["namespace"]
    assert not selects(policy["spec"]["podSelector"], {"app.kubernetes.io/name": "other"})
