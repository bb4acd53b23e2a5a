"""``check`` while the install changes under it: the CA rotation runbook and a rollout.

With pods created throughout, the CA rotation in the documented order
(trust both, serve the new certificate, trust only the new CA) refuses no
pod and ``check`` passes at each step; the reverse order fails as the API
server fails. A namespace setting changed under running pods makes their
sidecars outdated until the ``rollout restart`` that ``check`` prints.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from pathlib import Path

import pytest
import yaml

from harness.kube.admin_api import ApiRefused
from harness.kube.control_plane import ControlPlane
from harness.kube.install import (
    NAMESPACE,
    SERVICE,
    InstalledWebhook,
    Object,
    create,
    is_injected,
    pod_manifest,
    wait_until_injecting,
)
from harness.server import CLI
from tests.e2e.check.shared import (
    EFFECT_TIMEOUT,
    MESHED,
    CheckRun,
    ca_bundle_operations,
    configuration_restored,
    creation_error,
    patch_configuration,
    run_check,
)
from webhook.pki import certs

pytestmark = pytest.mark.cluster

PACE_SECONDS = 0.1  # between one pod creation and the next


class PodCreator:
    """Creates pods in the meshed namespace, one every PACE_SECONDS or so, until stopped;
    records each outcome."""

    def __init__(self, control_plane: ControlPlane) -> None:
        self.control_plane = control_plane
        self.outcomes: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodCreator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            name = f"rotation-{uuid.uuid4().hex[:6]}"
            try:
                pod = create(self.control_plane, MESHED, pod_manifest(name))
            except ApiRefused as error:
                self.outcomes.append(f"{name}: refused: {error.message}")
            else:
                self.outcomes.append(
                    f"{name}: {'injected' if is_injected(pod) else 'NOT injected'}"
                )
            # A creation every so often is enough to meet every step of the
            # rotation; back to back they would take a core from the rest.
            self._stop.wait(PACE_SECONDS)

    def wait_for_more(self, count: int) -> None:
        """Until ``count`` more pods were created (so each step is really exercised)."""
        target = len(self.outcomes) + count
        self.control_plane.wait_for(
            lambda: len(self.outcomes) >= target, what=f"{count} more pods", timeout=60
        )


def _set_ca_bundle(control_plane: ControlPlane, pem: bytes) -> None:
    patch_configuration(control_plane, *ca_bundle_operations(control_plane, pem))


def _issuers(run: CheckRun) -> set[str]:
    return {
        d.split(" issued by ")[1].split(",")[0]
        for d in run.check("ca-bundle")["details"]
        if " issued by " in d
    }


def test_a_ca_rotation_in_the_documented_order_refuses_no_pod(
    control_plane: ControlPlane, install: InstalledWebhook, tmp_path: Path
) -> None:
    old_dir, new_dir = install.certs, tmp_path / "certs-next"
    subprocess.run(
        [CLI, "certs", "--out", str(new_dir), "--service", SERVICE, "--namespace", NAMESPACE],
        check=True,
        capture_output=True,
    )
    old_ca, new_ca = (old_dir / "ca.crt").read_bytes(), (new_dir / "ca.crt").read_bytes()
    old_pair = ((old_dir / "tls.key").read_bytes(), (old_dir / "tls.crt").read_bytes())
    old_name = certs.load_ca(old_dir / "ca.crt", old_dir / "ca.key").cert.subject
    new_name = certs.load_ca(new_dir / "ca.crt", new_dir / "ca.key").cert.subject
    old_cn, new_cn = (
        n.rfc4514_string().split("CN=")[1].split(",")[0] for n in (old_name, new_name)
    )
    try:
        with configuration_restored(install), PodCreator(control_plane) as pods:
            pods.wait_for_more(2)
            # 1. Trust both.
            _set_ca_bundle(control_plane, old_ca + new_ca)
            run = run_check(control_plane)
            assert run.status("ca-bundle") == "pass", run
            assert _issuers(run) == {old_cn}
            pods.wait_for_more(2)
            # 2. Serve the new CA's certificate (key first, as certs writes).
            (old_dir / "tls.key").write_bytes((new_dir / "tls.key").read_bytes())
            (old_dir / "tls.crt").write_bytes((new_dir / "tls.crt").read_bytes())
            run = run_check(control_plane)
            assert run.status("ca-bundle") == "pass", run
            assert _issuers(run) == {new_cn}
            pods.wait_for_more(2)
            # 3. Trust only the new CA.
            _set_ca_bundle(control_plane, new_ca)
            run = run_check(control_plane)
            assert run.status("ca-bundle") == "pass", run
            pods.wait_for_more(2)
        assert pods.outcomes, "no pod was created"
        assert all(o.endswith(": injected") for o in pods.outcomes), pods.outcomes

        # The wrong order: the old certificate served while only the new CA is trusted.
        (old_dir / "tls.key").write_bytes(old_pair[0])
        (old_dir / "tls.crt").write_bytes(old_pair[1])
        with configuration_restored(install):
            _set_ca_bundle(control_plane, new_ca)
            run = run_check(control_plane)
            assert run.status("ca-bundle") == "fail", run
            # The API server still holds a connection handshaken in step 3 for
            # this very bundle; a replica restart ends it, as any would.
            install.stop_process()
            install.start_process()
            assert "x509" in creation_error(control_plane)
    finally:
        (old_dir / "tls.key").write_bytes(old_pair[0])
        (old_dir / "tls.crt").write_bytes(old_pair[1])


def _web_deployment(name: str, replicas: int) -> Object:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            # Pods never become ready without a kubelet, so a rolling update
            # would wait forever; Recreate replaces them at once.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    }


def _pod_names(control_plane: ControlPlane, namespace: str, selector: str) -> set[str]:
    items = control_plane.admin_api().items(
        f"/api/v1/namespaces/{namespace}/pods", selector=selector
    )
    return {p["metadata"]["name"] for p in items if not p["metadata"].get("deletionTimestamp")}


def test_a_changed_namespace_setting_makes_sidecars_outdated_until_the_rollout_restart(
    control_plane: ControlPlane, install: InstalledWebhook
) -> None:
    namespace = "check-settings"
    name = "web"
    control_plane.create_namespace(namespace, labels={"sidecar-injection": "enabled"})
    try:
        control_plane.kubectl(
            "-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(_web_deployment(name, 2))
        )
        control_plane.wait_for(
            lambda: len(_pod_names(control_plane, namespace, f"app={name}")) == 2,
            what="the Deployment's pods",
            timeout=EFFECT_TIMEOUT,
        )
        run = run_check(control_plane, "--namespace", namespace)
        assert run.status("outdated-sidecars") == "pass", run

        # Same injector, same version: only the digest can tell these pods apart.
        control_plane.kubectl("label", "namespace", namespace, "sidecar.mesh.io/log-level=debug")
        wait_until_injecting(control_plane, namespace, timeout=60)  # the label has reached us
        run = run_check(control_plane, "--namespace", namespace)
        result = run.check("outdated-sidecars")
        assert result["status"] == "warn", run
        (workload,) = [w for w in result["data"]["workloads"] if w["name"] == name]
        assert workload["kind"] == "Deployment"
        assert workload["pods"] == 2
        assert any("containers differ" in reason for reason in workload["reasons"])
        old = _pod_names(control_plane, namespace, f"app={name}")

        # What the line says to run; without a kubelet, old pods go at once.
        control_plane.kubectl(*workload["restart"].split()[1:])

        def replaced() -> bool:
            now = _pod_names(control_plane, namespace, f"app={name}")
            return len(now) == 2 and not (now & old)

        control_plane.wait_for(replaced, what="the restarted pods", timeout=60)
        run = run_check(control_plane, "--namespace", namespace)
        outdated = run.check("outdated-sidecars")["data"]["workloads"]
        assert [w for w in outdated if w["name"] == name] == [], run
    finally:
        control_plane.kubectl("label", "namespace", namespace, "sidecar-injection-")
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
