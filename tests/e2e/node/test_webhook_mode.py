"""The install on a real one-node cluster: what users see first, on kind or a real cluster.

The node (:mod:`harness.kube.node`) is containerd + kubelet + kube-scheduler +
kube-proxy next to the e2e control plane, and the install is the rendered
``make deploy`` one, running from the images the project's Dockerfiles
build (:mod:`harness.kube.images`). Every test asserts behaviour: pods Running
and Ready, init containers Completed, Envoy's own counters, creations that
succeed and come back injected; never the exact injected spec, which the
engine's own tests pin down.

Skipped, with the reason, only where the machine cannot run a node (no root,
missing kernel features). Missing packages fail (``apt-get install`` them;
``.ci/run`` does), and so does a teardown that leaves host state behind.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness.kube.images import product_tags
from harness.kube.install import NAMESPACE, PROXY, is_injected
from harness.kube.node import Node
from harness.kube.node_install import (
    NodeInstall,
    PodStream,
    apply,
    container_status,
    delete_namespace,
    describe_pods,
    injector_pod_names,
    node_install,
    pod_spec,
    pods,
    serves_through_both_proxies,
    summarize,
)
from harness.server import CLI
from tests.e2e.node.canary import canary_walk
from webhook.contract.constants import STATUS_ANNOTATION
from webhook.pki import certs

pytestmark = [pytest.mark.node]

NATIVE = "sidecar.mesh.io/native-sidecar"


@pytest.fixture(scope="module")
def install(node: Node) -> Iterator[NodeInstall]:
    """The rendered install, deployed and serving."""
    with node_install(node) as installed:
        yield installed


def _namespace(node: Node, name: str, **labels: str) -> str:
    node.control_plane.create_namespace(name, labels=labels)
    return name


# --- the Helm chart (first: manifests/ is installed by the tests after these) ----------


# Two helm installs and an uninstall with --wait, three rollouts and two checks
# on one node: well past the suite's per-test timeout, and the node's start is
# counted against the module's first test.
@pytest.mark.timeout(1800)
def test_helm_canary_upgrade_under_continuous_pod_creation(node: Node) -> None:
    """docs/upgrade.md's walk: default and canary as Helm releases, moved by label and by
    tag, restarted, checked, default uninstalled; every pod created meanwhile injected."""
    canary_walk(node)


# --- the install itself ---------------------------------------------------------------


def test_install_runs_two_replicas_from_its_own_image(node: Node, install: NodeInstall) -> None:
    deployment = json.loads(
        node.kubectl("-n", NAMESPACE, "get", "deployment", "sidecar-injector", "-o", "json").stdout
    )
    assert deployment["status"].get("readyReplicas") == 2, deployment["status"]
    running = [p for p in install.injector_pods() if not p["metadata"].get("deletionTimestamp")]
    assert len(running) == 2, describe_pods(running)
    built = node.images["webhook"]
    for pod in running:
        spec = pod["spec"]
        # Its own identity, never the admin's: the namespace watch works only
        # if the install's ServiceAccount and RBAC do.
        assert spec["serviceAccountName"] == "sidecar-injector"
        (container,) = spec["containers"]
        assert container["image"] == product_tags()["webhook"]
        status = container_status(pod, "sidecar-injector")
        assert status is not None
        assert status["ready"], status
        assert status["restartCount"] == 0, status
        assert built.digest in status["imageID"], (status["imageID"], built.digest)
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "sidecar-injector-tls"
    # The apiserver reached it through the Service: injection works (the
    # install waits for a dry-run pod to come back injected), and the
    # Service's endpoints become exactly the two ready pods (the EndpointSlice
    # controller follows a pod's readiness a moment later).
    pod_ips = {p["status"]["podIP"] for p in running}
    node.wait_for(
        lambda: _ready_addresses(node) == pod_ips,
        what=f"the Service's ready endpoints to be {sorted(pod_ips)}",
        timeout=60,
    )


def _ready_addresses(node: Node) -> set[str]:
    slices = node.control_plane.admin_api().items(
        f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices",
        selector="kubernetes.io/service-name=sidecar-injector",
    )
    return {
        address
        for item in slices
        for endpoint in item.get("endpoints") or []
        if endpoint.get("conditions", {}).get("ready")
        for address in endpoint["addresses"]
    }


def test_injector_pods_are_not_injected(install: NodeInstall) -> None:
    for pod in install.injector_pods():
        names = [c["name"] for c in pod["spec"]["containers"]]
        names += [c["name"] for c in pod["spec"].get("initContainers") or []]
        assert names == ["sidecar-injector"], names
        assert STATUS_ANNOTATION not in (pod["metadata"].get("annotations") or {})


# --- sidecar-injector check on the real install (docs/operations.md) ----------------------


def _check(node: Node, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """Run ``sidecar-injector check -o json``; (exit status, checks by name)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    done = subprocess.run(
        [CLI, "check", "--kubeconfig", str(node.kubeconfig), "-o", "json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.stdout, done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    return done.returncode, checks


def _not_passing(checks: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {n: f"{c['status']}: {c['message']}" for n, c in checks.items() if c["status"] != "pass"}


def _injector_ips(install: NodeInstall) -> dict[str, str]:
    running = [p for p in install.injector_pods() if not p["metadata"].get("deletionTimestamp")]
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in running}


@pytest.mark.parametrize("connect", ["direct", "port-forward"])
def test_check_passes_on_the_real_install_reaching_each_replica(
    node: Node, install: NodeInstall, connect: str
) -> None:
    # direct: the pod addresses, as the API server dials them (this host is
    # the node); port-forward: through the API server and the kubelet, the
    # way check gets there from a workstation.
    code, checks = _check(node, "--connect", connect)
    assert code == 0, _not_passing(checks)
    assert _not_passing(checks) == {}
    assert checks["replicas"]["data"]["ready"] == 2
    details = checks["ca-bundle"]["details"]
    for pod, ip in _injector_ips(install).items():
        assert any(d.startswith(f"{ip}:8443 (pod {pod}) via {connect}:") for d in details), details


def _serve_expired_certificate(node: Node, install: NodeInstall) -> None:
    """Put an expired serving certificate (same CA) into the Secret the replicas mount."""
    ca = certs.load_ca(install.certs / "ca.crt", install.certs / "ca.key")
    dns, ips = certs.service_names()
    leaf = certs.make_serving_cert(
        ca,
        dns_names=dns,
        ips=ips,
        days=1,
        now=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=5),
    )
    data = {"tls.crt": leaf.cert_pem(), "tls.key": leaf.key_pem(), "ca.crt": ca.cert_pem()}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "sidecar-injector-tls", "namespace": NAMESPACE},
        "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(v).decode("ascii") for k, v in data.items()},
    }
    node.kubectl("apply", "-f", "-", input=json.dumps(secret))


def test_an_expired_certificate_makes_the_replicas_unready_and_check_says_why(
    node: Node, install: NodeInstall
) -> None:
    _serve_expired_certificate(node, install)
    try:
        # The kubelet updates the volume, each replica loads the pair on its
        # next handshake (the readiness probe is one) and /readyz fails.
        node.wait_for(
            lambda: not _ready_addresses(node), what="both replicas to be unready", timeout=180
        )
        code, checks = _check(node)
        assert code == 1
        assert (
            "no ready endpoints (2 endpoints not ready)" in checks["service-endpoints"]["message"]
        )
        # The not-ready endpoints are dialled anyway, to say why.
        assert checks["ca-bundle"]["status"] == "pass", checks["ca-bundle"]
        expiry = checks["certificate-expiry"]
        assert expiry["status"] == "fail", expiry
        assert "expired 4 days ago" in expiry["message"]
        assert checks["replicas"]["status"] == "fail"
    finally:
        install.rotate_certificate()  # what certs --renew + the Secret do
        node.wait_for(
            lambda: len(_ready_addresses(node)) == 2, what="both replicas to be ready", timeout=180
        )
        install.wait_until_injecting()
    code, checks = _check(node)
    assert code == 0, _not_passing(checks)


# --- meshed workloads -------------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False], ids=["native", "classic"])
def test_meshed_deployment_serves_through_both_proxies(
    node: Node, install: NodeInstall, native: bool
) -> None:
    mode = "native" if native else "classic"
    namespace = _namespace(
        node, f"meshed-{mode}", **{"sidecar-injection": "enabled", NATIVE: str(native).lower()}
    )
    try:
        serves_through_both_proxies(node, namespace, native=native)
    finally:
        delete_namespace(node, namespace)


def test_job_completes_in_native_mode(node: Node, install: NodeInstall) -> None:
    namespace = _namespace(node, "meshed-job", **{"sidecar-injection": "enabled", NATIVE: "true"})
    try:
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "once"},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": pod_spec(["sh", "-c", "echo done"], restart_policy="Never")},
            },
        }
        apply(node, namespace, job)

        def complete() -> bool:
            status = json.loads(
                node.kubectl("-n", namespace, "get", "job", "once", "-o", "json").stdout
            )["status"]
            if status.get("failed"):
                raise AssertionError(f"the Job failed: {status}")
            return bool(status.get("succeeded"))

        node.wait_for(complete, what="the Job to complete", timeout=180)
        (pod,) = pods(node, namespace, "batch.kubernetes.io/job-name=once")
        assert is_injected(pod)
        assert pod["status"]["phase"] == "Succeeded", describe_pods([pod])
        proxy = container_status(pod, PROXY)
        # The kubelet stopped the native sidecar once the app container was done.
        assert proxy is not None
        assert "terminated" in proxy["state"], proxy
        logs = node.kubectl("-n", namespace, "logs", pod["metadata"]["name"], "-c", "app")
        assert logs.stdout.strip() == "done"
    finally:
        delete_namespace(node, namespace)


# --- the injector under change --------------------------------------------------------


def test_certificate_renewal_in_the_secret_reaches_the_pods(
    node: Node, install: NodeInstall
) -> None:
    namespace = _namespace(node, "stream-certs", **{"sidecar-injection": "enabled"})
    running = [p for p in install.injector_pods() if not p["metadata"].get("deletionTimestamp")]
    uids = {p["metadata"]["uid"] for p in running}
    ips = [p["status"]["podIP"] for p in running]
    old = {ip: install.serving_fingerprint(ip) for ip in ips}
    stream = PodStream(node.kubeconfig, namespace).start()
    try:
        node.wait_for(lambda: stream.count() >= 20, what="pods being created", timeout=60)
        new = install.rotate_certificate()
        assert new not in old.values()
        # The kubelet swaps the Secret volume's files; the server notices on
        # the next handshake. Every replica must end up serving the new one.
        node.wait_for(
            lambda: all(install.serving_fingerprint(ip) == new for ip in ips),
            what="both replicas to serve the renewed certificate",
            timeout=180,
        )
        switched = stream.count()
        node.wait_for(
            lambda: stream.count() >= switched + 30,
            what="more pods admitted with the new certificate",
            timeout=60,
        )
    finally:
        outcomes = stream.stop()
        delete_namespace(node, namespace)
    assert outcomes
    assert all(o.ok and o.injected for o in outcomes), summarize(outcomes)
    # Reloaded in place: same pods, no restarts.
    after = [p for p in install.injector_pods() if not p["metadata"].get("deletionTimestamp")]
    assert {p["metadata"]["uid"] for p in after} == uids
    restarts = [(container_status(p, "sidecar-injector") or {}).get("restartCount") for p in after]
    assert restarts == [0, 0], restarts


def test_rollout_restart_under_continuous_pod_creation(node: Node, install: NodeInstall) -> None:
    namespace = _namespace(node, "stream-rollout", **{"sidecar-injection": "enabled"})
    old_pods = injector_pod_names(install)
    stream = PodStream(node.kubeconfig, namespace).start()
    window = (time.monotonic(), time.monotonic())
    try:
        node.wait_for(lambda: stream.count() >= 20, what="pods being created", timeout=60)
        restarted = time.monotonic()
        window = (restarted, restarted)
        node.kubectl("-n", NAMESPACE, "rollout", "restart", "deployment/sidecar-injector")
        node.kubectl(
            "-n", NAMESPACE, "rollout", "status", "deployment/sidecar-injector", "--timeout=300s",
            timeout=330,
        )  # fmt: skip
        # The rollout is "done" when the new pods are ready; the old ones are
        # still draining (preStop, then graceful shutdown). Keep creating
        # until they are gone, and a little beyond.
        node.wait_for(
            lambda: not (injector_pod_names(install) & old_pods),
            what="the old injector pods to be gone",
            timeout=120,
        )
        window = (restarted, time.monotonic())
        finished = stream.count()
        node.wait_for(
            lambda: stream.count() >= max(finished + 30, 300),
            what="creations to go on after the rollout",
            timeout=300,
        )
    finally:
        outcomes = stream.stop()
        delete_namespace(node, namespace)
    # Timings relative to `kubectl rollout restart`, and when the old pods were gone.
    gone = f"; old replicas gone at {window[1] - window[0]:+.1f}s"
    assert all(o.ok and o.injected for o in outcomes), summarize(outcomes, origin=window[0]) + gone
    during = [o for o in outcomes if window[0] <= o.started <= window[1]]
    # Meaningful only if the rollout really happened under load.
    assert len(during) >= 20, f"only {len(during)} creations during the rollout"
    new_pods = injector_pod_names(install)
    assert len(new_pods) == 2
    assert not (new_pods & old_pods)
