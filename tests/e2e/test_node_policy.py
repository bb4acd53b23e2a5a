"""Policy mode on a real one-node cluster: meshed pods with no injector running at all.

The node is the one of tests/e2e/test_node.py; the install is manifests/policy
applied as a user would (``kubectl apply --server-side -k manifests/policy``):
a MutatingAdmissionPolicy, a ValidatingAdmissionPolicy and their bindings,
and nothing else: no Deployment, Service, certificate or webhook
configuration. The API server injects, and a meshed Deployment serves
traffic through both proxies exactly as with the webhook (the same helper
asserts it, on Envoy's own counters).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.kube.install import NAMESPACE
from harness.kube.node import Node
from harness.kube.node_install import delete_namespace, serves_through_both_proxies
from tests.e2e.test_node import node

pytestmark = [pytest.mark.node]
__all__ = ["node"]  # the fixture

POLICY = Path(__file__).resolve().parents[2] / "manifests" / "policy"
NATIVE = "sidecar.mesh.io/native-sidecar"


@pytest.fixture(scope="module")
def policy_mode(node: Node) -> Iterator[None]:
    """manifests/policy applied; gone again afterwards."""
    node.kubectl("apply", "--server-side", "-k", str(POLICY))
    canary = "policy-canary"
    node.control_plane.create_namespace(canary, labels={"sidecar-injection": "enabled"})
    probe = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }

    def injecting() -> bool:
        done = node.kubectl(
            "-n", canary, "create", "--dry-run=server", "-o", "json", "-f", "-",
            input=json.dumps(probe), check=False,
        )  # fmt: skip
        return done.returncode == 0 and "mesh-proxy" in done.stdout

    node.wait_for(injecting, what="the policy to inject", timeout=120)
    try:
        yield
    finally:
        delete_namespace(node, canary)
        node.kubectl("delete", "-k", str(POLICY), "--ignore-not-found", check=False)


def test_nothing_of_the_webhook_install_is_there(node: Node, policy_mode: None) -> None:
    rendered = yaml.safe_load_all(node.kubectl("kustomize", str(POLICY)).stdout)
    kinds = sorted({obj["kind"] for obj in rendered if obj})
    assert kinds == [
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    webhooks = node.kubectl("get", "mutatingwebhookconfigurations", "-o", "name").stdout
    assert "sidecar-injector" not in webhooks
    assert node.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0


@pytest.mark.parametrize("native", [True, False], ids=["native", "classic"])
def test_meshed_deployment_injected_by_the_policy_serves_through_both_proxies(
    node: Node, policy_mode: None, native: bool
) -> None:
    mode = "native" if native else "classic"
    namespace = f"policy-meshed-{mode}"
    node.control_plane.create_namespace(
        namespace, labels={"sidecar-injection": "enabled", NATIVE: str(native).lower()}
    )
    try:
        serves_through_both_proxies(node, namespace, native=native)
    finally:
        delete_namespace(node, namespace)
