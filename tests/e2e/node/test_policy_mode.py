"""Policy mode on a real one-node cluster: meshed pods with no injector running at all.

The node is the folder's (``conftest.node``), the webhook-mode tests' install
removed before these start; the install is manifests/policy
applied as a user would (``kubectl apply --server-side -k manifests/policy``):
a MutatingAdmissionPolicy, a ValidatingAdmissionPolicy and their bindings,
and nothing else: no Deployment, Service, certificate or webhook
configuration. The API server injects, and a meshed Deployment serves
traffic through both proxies exactly as with the webhook (the same helper
asserts it, on Envoy's own counters).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.kube.admin_api import ApiRefused
from harness.kube.helm_release import CHART, HelmRelease, remove_everything
from harness.kube.images import product_tags
from harness.kube.install import NAMESPACE
from harness.kube.node import Node
from harness.kube.node_install import (
    SLEEPER,
    apply,
    delete_namespace,
    deployment_manifest,
    pod_manifest,
    recorded_revision,
    serves_through_both_proxies,
    wait_ready,
)
from harness.server import CLI
from tests.builders import REPO

pytestmark = [pytest.mark.node]

POLICY = REPO / "manifests" / "policy"
NATIVE = "sidecar.mesh.io/native-sidecar"
REV = "sidecar.mesh.io/rev"
ENABLED = {"sidecar-injection": "enabled"}
CANARY_PROXY = "v1.41.0"


# --- the Helm chart in policy mode (first: before manifests/policy is applied) ----------


def _served_by(node: Node, namespace: str) -> str | None:
    """The revision whose sidecar a dry-run pod in ``namespace`` comes back with."""
    probe = pod_manifest("probe", command=["true"])
    try:
        pod = node.control_plane.admin_api().create(namespace, probe, dry_run=True)
    except ApiRefused:
        return None
    return recorded_revision(pod)


@pytest.mark.timeout(1500)  # the node starts within it; two releases, two rollouts
def test_helm_installs_policy_mode_revisions_that_mesh_running_pods(
    node: Node, tmp_path: Path
) -> None:
    """``helm install`` with mode=policy: the default revision from the chart's shipped
    policies, a canary with a newer proxy version from policies rendered for it
    (``--set-file policy=``); a Deployment meshed by each, running; no webhook at all."""
    canary_values = {"config": {"proxy": {"version": CANARY_PROXY}}}
    config = tmp_path / "config.yaml"
    canary_image = f"{product_tags()['envoy'].rsplit(':', 1)[0]}:{CANARY_PROXY}"
    node.ctr("images", "tag", "--force", product_tags()["envoy"], canary_image)
    default = HelmRelease(node, "default", {"mode": "policy"})
    canary = HelmRelease(node, "canary", {"mode": "policy", **canary_values})
    # The release's config, as the chart would give the injector, rendered to policies.
    (config_map,) = [
        o
        for o in yaml.safe_load_all(canary.helm_run("template", canary.name, str(CHART),
            "--namespace", NAMESPACE, "--set", "revision=canary",
            "--set", f"config.proxy.version={CANARY_PROXY}"))
        if o and o["kind"] == "ConfigMap"
    ]  # fmt: skip
    config.write_text(config_map["data"]["config.yaml"], encoding="utf-8")
    policy = subprocess.run(
        [CLI, "policy", "--config", str(config), "--revision", "canary"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    canary.values["policy"] = policy
    namespaces = {"helm-policy-default": ENABLED, "helm-policy-canary": {REV: "canary"}}
    try:
        default.install()
        canary.install()
        for namespace, labels in namespaces.items():
            node.control_plane.create_namespace(namespace, labels=labels)
        for namespace, revision in zip(namespaces, ("default", "canary"), strict=True):
            node.wait_for(
                lambda n=namespace, r=revision: _served_by(node, n) == r,  # type: ignore[misc]
                what=f"revision {revision}'s policies injecting in {namespace}",
                timeout=120,
            )
        kinds = {o["kind"] for o in default.objects("mutatingadmissionpolicybindings")}
        assert kinds == {"MutatingAdmissionPolicyBinding"}
        webhooks = node.kubectl("get", "mutatingwebhookconfigurations", "-o", "name").stdout
        assert "sidecar-injector" not in webhooks
        for namespace, image in zip(
            namespaces, (product_tags()["envoy"], canary_image), strict=True
        ):
            apply(node, namespace, deployment_manifest("web", replicas=1, command=SLEEPER))
            (pod,) = wait_ready(node, namespace, "app=web", 1, timeout=240)
            proxies = [
                c["image"]
                for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
                if c["name"] == "mesh-proxy"
            ]
            assert proxies == [image], pod["spec"]
    finally:
        for namespace in namespaces:
            delete_namespace(node, namespace)
        remove_everything(node, [canary, default])
        node.ctr("images", "rm", canary_image, check=False)
    assert node.kubectl("get", "mutatingadmissionpolicy", "-o", "name").stdout.strip() == ""


# --- manifests/policy --------------------------------------------------------------------


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
