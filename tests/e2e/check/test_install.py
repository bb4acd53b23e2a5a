"""``sidecar-injector check`` against the real install on a real kube-apiserver: healthy, then
broken one way at a time.

The install is the rendered one (:mod:`harness.kube.install`), served by
a local ``serve`` behind its Service. Each test breaks it in one way ``check``
detects, runs the real command with ``-o json`` (and once as text), and puts
it back. Where the API server itself is affected, the test also shows that a
pod creation really fails while ``check`` says so: a check that disagreed with
the API server would be worse than none.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.kube.control_plane import ControlPlane
from harness.kube.install import (
    NAMESPACE,
    SERVICE,
    InstalledWebhook,
    Object,
    wait_until_injecting,
)
from harness.server import CLI, running_server
from tests.e2e.check.shared import (
    EFFECT_TIMEOUT,
    MESHED,
    ca_bundle_operations,
    configuration_restored,
    creation_error,
    patch_configuration,
    run_check,
    run_cli,
    selector_expression_path,
    write_leaf,
)
from webhook.contract.constants import STATUS_ANNOTATION
from webhook.pki import certs

pytestmark = pytest.mark.cluster


# --- healthy --------------------------------------------------------------------------


def test_a_healthy_install_passes_and_a_lone_replica_is_a_warning(
    control_plane: ControlPlane, install: InstalledWebhook
) -> None:
    run = run_check(control_plane)
    assert run.returncode == 0, run
    assert run.document["ok"] is True
    statuses = run.statuses()
    assert statuses.pop("replicas") == "warn", run
    assert set(statuses.values()) == {"pass"}, run
    assert "1 ready replica" in run.check("replicas")["message"]
    assert "wants 2" in run.check("replicas")["message"]  # the Deployment's own count
    assert run.check("injector-config")["data"]["configMap"].startswith("sidecar-injector-config")
    assert "sidecar-injector.mesh-system.svc" in run.check("ca-bundle")["message"]
    assert 364 <= run.check("certificate-expiry")["data"]["days"] <= 365
    assert f"{MESHED}: injected" in run.check("dry-run-injection")["details"]
    outdated = run.check("outdated-sidecars")
    assert outdated["data"]["injected"] >= 1
    # The dry-run pod's digest matched this check's engine: digests are compared.
    assert outdated["details"] == [], outdated


def test_the_text_output_has_one_line_per_check_and_a_summary(
    control_plane: ControlPlane, install: InstalledWebhook
) -> None:
    done = run_cli(control_plane)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    verdicts = [line for line in lines if line[:4] in ("PASS", "WARN", "FAIL", "SKIP")]
    assert len(verdicts) == 16, done.stdout
    assert any(line.startswith("WARN  replicas") for line in verdicts)
    assert any("hint: " in line for line in lines)  # the warning's hint
    assert lines[-1] == "15 passed, 1 warning, 0 failed, 0 skipped"


def test_two_ready_replicas_pass_and_both_endpoints_are_dialled(
    control_plane: ControlPlane, install: InstalledWebhook, tmp_path: Path
) -> None:
    with running_server(
        tmp_path / "second",
        cert_dir=install.certs,
        args=["--config", str(install.config_file), "--kubeconfig", str(control_plane.kubeconfig)],
    ) as second:
        extra = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{SERVICE}-loopback-2",
                "namespace": NAMESPACE,
                "labels": {"kubernetes.io/service-name": SERVICE},
            },
            "addressType": "FQDN",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
            "ports": [{"name": install.port_name, "port": second.port, "protocol": "TCP"}],
        }
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(extra))
        try:
            run = run_check(control_plane)
        finally:
            control_plane.kubectl(
                "-n", NAMESPACE, "delete", "endpointslice", f"{SERVICE}-loopback-2"
            )
    assert run.returncode == 0, run
    assert run.status("replicas") == "pass", run
    assert run.check("replicas")["data"]["ready"] == 2
    assert "both 2 endpoints" in run.check("ca-bundle")["message"], run


# --- broken, one way at a time ----------------------------------------------------------


def test_a_wrong_ca_bundle_fails_as_the_api_server_fails(
    control_plane: ControlPlane, install: InstalledWebhook
) -> None:
    other = certs.make_ca(common_name="some other CA").cert_pem()
    with configuration_restored(install):
        patch_configuration(control_plane, *ca_bundle_operations(control_plane, other))
        run = run_check(control_plane)
        assert run.returncode == 1, run
        assert run.document["ok"] is False
        result = run.check("ca-bundle")
        assert result["status"] == "fail", run
        assert "does not verify" in result["message"]
        assert "some other CA" in result["message"]
        assert "make manifests" in result["hint"]
        assert run.status("dry-run-injection") == "fail", run
        assert "x509" in creation_error(control_plane)


def test_an_empty_ca_bundle_is_named(
    control_plane: ControlPlane, install: InstalledWebhook
) -> None:
    with configuration_restored(install):
        patch_configuration(
            control_plane, {"op": "remove", "path": "/webhooks/1/clientConfig/caBundle"}
        )
        run = run_check(control_plane)
        assert run.returncode == 1
        assert run.status("ca-bundle") == "fail"
        assert "object.sidecar.mesh.io: caBundle is empty" in run.check("ca-bundle")["message"]


def test_no_ready_endpoints_fail_and_the_not_ready_one_is_still_dialled(
    control_plane: ControlPlane, install: InstalledWebhook
) -> None:
    slice_name = f"{SERVICE}-loopback"
    try:
        control_plane.kubectl(
            "-n",
            NAMESPACE,
            "patch",
            "endpointslice",
            slice_name,
            "--type=json",
            "-p",
            json.dumps(
                [{"op": "replace", "path": "/endpoints/0/conditions/ready", "value": False}]
            ),
        )
        run = run_check(control_plane)
        assert run.returncode == 1, run
        assert run.status("service-endpoints") == "fail", run
        assert (
            "no ready endpoints (1 endpoint not ready)" in run.check("service-endpoints")["message"]
        )
        assert run.status("replicas") == "fail"
        assert run.status("ca-bundle") == "pass"  # dialled anyway, to tell why
        assert "failed calling webhook" in creation_error(control_plane)

        control_plane.kubectl("-n", NAMESPACE, "delete", "endpointslice", slice_name)
        run = run_check(control_plane)
        assert run.returncode == 1
        assert "has no ready endpoints" in run.check("service-endpoints")["message"]
        assert run.status("ca-bundle") == "skip"
    finally:
        control_plane.route_service_to_loopback(
            NAMESPACE, SERVICE, port=install.server.port, port_name=install.port_name
        )
        wait_until_injecting(control_plane, MESHED, timeout=60)


def test_an_endpoint_nobody_answers_on_fails_the_handshake_check(
    control_plane: ControlPlane, install: InstalledWebhook
) -> None:
    install.stop_process()
    try:
        run = run_check(control_plane)
        assert run.returncode == 1, run
        result = run.check("ca-bundle")
        assert result["status"] == "fail", run
        assert "cannot complete a TLS handshake with 1 of 1 endpoints" in result["message"]
        assert "refused" in result["message"].lower()
    finally:
        install.start_process()
        wait_until_injecting(control_plane, MESHED, timeout=60)


def test_an_expired_certificate_fails_a_short_one_warns_and_renew_fixes_it(
    control_plane: ControlPlane, install: InstalledWebhook
) -> None:
    cert_dir = install.certs
    ca_bundle = (cert_dir / "ca.crt").read_bytes()
    try:
        write_leaf(cert_dir, days=1, started_days_ago=3)
        # The server reloads on the next handshake, which check's own dial is.
        run = run_check(control_plane)
        assert run.returncode == 1, run
        assert run.status("ca-bundle") == "pass", run  # the bundle does sign it
        expiry = run.check("certificate-expiry")
        assert expiry["status"] == "fail", run
        assert "expired 2 days ago" in expiry["message"]
        assert "certs --renew" in expiry["hint"]
        # (The API server is not asked here: it keeps using the connection it
        # opened while the certificate was valid, and only new handshakes see
        # the expired one, which check's own dial is.)

        write_leaf(cert_dir, days=10)
        run = run_check(control_plane)
        assert run.returncode == 0, run
        assert run.status("certificate-expiry") == "warn"
        assert "expires in 10 days" in run.check("certificate-expiry")["message"]
    finally:
        renewed = subprocess.run(
            [CLI, "certs", "--renew", "--out", str(cert_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert renewed.returncode == 0, renewed.stderr
    assert (cert_dir / "ca.crt").read_bytes() == ca_bundle
    run = run_check(control_plane)
    assert run.status("certificate-expiry") == "pass", run
    wait_until_injecting(control_plane, MESHED, timeout=60)


def test_a_selector_that_lets_kube_system_in_fails(
    control_plane: ControlPlane, install: InstalledWebhook
) -> None:
    with configuration_restored(install):
        # The object webhook selects namespaces without the opt-in label; without
        # its name exclusion, that is kube-system and the injector's own namespace.
        name_exclusion = selector_expression_path(
            control_plane, "object.sidecar.mesh.io", "kubernetes.io/metadata.name"
        )
        patch_configuration(control_plane, {"op": "remove", "path": name_exclusion})
        run = run_check(control_plane)
        assert run.returncode == 1, run
        result = run.check("excluded-namespaces")
        assert result["status"] == "fail"
        assert "webhook object.sidecar.mesh.io selects kube-system" in result["message"]
        assert "kubernetes.io/metadata.name NotIn" in result["hint"]


def test_an_opted_in_namespace_enforcing_restricted_pod_security_fails(
    control_plane: ControlPlane, install: InstalledWebhook
) -> None:
    name = "check-strict"
    control_plane.create_namespace(
        name,
        labels={
            "sidecar-injection": "enabled",
            "pod-security.kubernetes.io/enforce": "restricted",
        },
    )
    try:
        run = run_check(control_plane)
        assert run.returncode == 1, run
        security = run.check("pod-security")
        assert security["status"] == "fail"
        assert "check-strict enforces restricted" in security["message"]
        assert security["data"]["namespaces"] == [name]
        dry_run = run.check("dry-run-injection")
        assert dry_run["status"] == "fail"
        assert "check-strict: refused" in dry_run["message"]
        # The namespace alone, as a script would ask.
        only = run_check(control_plane, "--namespace", MESHED)
        assert only.status("pod-security") == "pass", only
        assert only.status("dry-run-injection") == "pass", only
    finally:
        # Opted out first: a namespace being deleted keeps its labels a while.
        control_plane.kubectl("label", "namespace", name, "sidecar-injection-")
        control_plane.kubectl("delete", "namespace", name, "--wait=false")


def _legacy_deployment(name: str, replicas: int) -> Object:
    """A Deployment whose pods carry an injection recorded by an older injector."""
    status = {
        "version": "0.0.9",
        "initContainers": ["mesh-init"],
        "containers": ["mesh-proxy"],
        "volumes": [],
    }
    image = "registry.invalid/app:1"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name},
                    "annotations": {STATUS_ANNOTATION: json.dumps(status)},
                },
                "spec": {
                    "initContainers": [{"name": "mesh-init", "image": image}],
                    "containers": [
                        {"name": "app", "image": image},
                        {"name": "mesh-proxy", "image": image},
                    ],
                },
            },
        },
    }


def test_pods_injected_by_an_older_version_are_grouped_by_deployment_with_the_restart(
    control_plane: ControlPlane, install: InstalledWebhook
) -> None:
    name = "legacy"
    control_plane.kubectl(
        "-n", MESHED, "apply", "-f", "-", input=yaml.safe_dump(_legacy_deployment(name, 2))
    )

    def two_pods() -> bool:
        done = control_plane.kubectl("-n", MESHED, "get", "pods", "-l", f"app={name}", "-o", "json")
        return len(json.loads(done.stdout)["items"]) == 2

    control_plane.wait_for(two_pods, what="the legacy Deployment's pods", timeout=EFFECT_TIMEOUT)
    try:
        run = run_check(control_plane)
        assert run.returncode == 0, run  # a warning, not a failure
        result = run.check("outdated-sidecars")
        assert result["status"] == "warn", run
        assert f"2 pods run an outdated sidecar ({MESHED}: 2)" in result["message"]
        (workload,) = result["data"]["workloads"]
        assert workload["kind"] == "Deployment"  # pod -> ReplicaSet -> Deployment
        assert workload["name"] == name
        assert workload["pods"] == 2
        assert workload["restart"] == f"kubectl rollout restart -n {MESHED} deployment/{name}"
        assert "injected by 0.0.9, the injector is 0.1.0" in workload["reasons"]
        assert any(f"deployment/{name} (2 pods" in d for d in result["details"])
        assert result["data"]["namespaces"] == {MESHED: 2}

        elsewhere = run_check(control_plane, "--namespace", "default")
        assert elsewhere.check("outdated-sidecars")["data"]["outdated"] == 0
    finally:
        control_plane.kubectl("-n", MESHED, "delete", "deployment", name)


def test_an_unreachable_api_server_fails_the_first_check_and_skips_the_rest(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [CLI, "check", "--kubeconfig", str(kubeconfig), "-o", "json", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    document = json.loads(done.stdout)
    statuses = [c["status"] for c in document["checks"]]
    assert statuses[0] == "fail"
    assert set(statuses[1:]) == {"skip"}
    assert "refused" in document["checks"][0]["message"].lower()
    assert "Traceback" not in done.stderr
