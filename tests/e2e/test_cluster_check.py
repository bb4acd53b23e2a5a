"""``sidecar-injector check`` against the real install on a real kube-apiserver.

The install is the rendered one (:mod:`harness.kube.install`), served by
a local ``serve`` behind its Service. Each test breaks it in one way ``check``
detects, runs the real command with ``-o json`` (and once as text), and puts
it back. Where the API server itself is affected, the test also shows that a
pod creation really fails while ``check`` says so: a check that disagreed with
the API server would be worse than none.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import io
import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.kube.control_plane import ControlPlane, KubectlError
from harness.kube.install import (
    CONFIGURATION,
    NAMESPACE,
    SERVICE,
    InstalledWebhook,
    Object,
    create,
    installed_webhook,
    is_injected,
    pod_manifest,
    wait_until_injecting,
)
from harness.server import CLI, running_server
from webhook.cli import main as cli
from webhook.contract.constants import STATUS_ANNOTATION
from webhook.pki import certs

pytestmark = pytest.mark.cluster

MESHED = "check-shop"
EFFECT_TIMEOUT = 30.0


@dataclass(frozen=True)
class CheckRun:
    """One run of ``sidecar-injector check``: exit code, the JSON document, stderr."""

    returncode: int
    document: dict[str, Any]
    stderr: str

    def check(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = next(c for c in self.document["checks"] if c["name"] == name)
        return found

    def status(self, name: str) -> str:
        status: str = self.check(name)["status"]
        return status

    def statuses(self) -> dict[str, str]:
        return {c["name"]: c["status"] for c in self.document["checks"]}

    def __repr__(self) -> str:
        # What an assertion message needs: the checks that did not pass.
        lines = [f"exit {self.returncode}"]
        for c in self.document["checks"]:
            if c["status"] != "pass":
                lines.append(f"{c['status']} {c['name']}: {c['message']} | {c['details']}")
        return "\n".join(lines)


def run_check(control_plane: ControlPlane, *args: str) -> CheckRun:
    """``sidecar-injector check -o json`` through the CLI's own ``main``, in this process.

    The same code path as the console script minus the interpreter start and
    imports (seconds each on a loaded machine, and these tests run it about
    thirty times); the console script itself is run by the text-output test.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(["check", "--kubeconfig", str(control_plane.kubeconfig), "-o", "json", *args])
    assert out.getvalue(), err.getvalue()
    return CheckRun(code, json.loads(out.getvalue()), err.getvalue())


def _run_cli(control_plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(
        [CLI, "check", "--kubeconfig", str(control_plane.kubeconfig), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def install(control_plane: ControlPlane) -> Iterator[InstalledWebhook]:
    try:
        with installed_webhook(control_plane) as installed:
            control_plane.create_namespace(MESHED, labels={"sidecar-injection": "enabled"})
            wait_until_injecting(control_plane, MESHED, timeout=60)
            try:
                yield installed
            finally:
                control_plane.kubectl("delete", "namespace", MESHED, "--wait=false", check=False)
    finally:
        # The install's teardown deletes mesh-system without waiting; the next
        # module to install into this session's control plane could not
        # create anything in it while it is terminating.
        control_plane.kubectl(
            "wait", "--for=delete", f"namespace/{NAMESPACE}", "--timeout=120s",
            check=False, timeout=150,
        )  # fmt: skip


def _configuration(install: InstalledWebhook) -> Object:
    found: Object = next(
        o for o in install.objects if o.get("kind") == "MutatingWebhookConfiguration"
    )
    return found


@contextlib.contextmanager
def configuration_restored(install: InstalledWebhook) -> Iterator[None]:
    """Put the rendered MutatingWebhookConfiguration back afterwards, and wait until it works."""
    try:
        yield
    finally:
        install.control_plane.kubectl(
            "apply", "-f", "-", input=yaml.safe_dump(_configuration(install))
        )
        wait_until_injecting(install.control_plane, MESHED, timeout=60)


def patch_configuration(control_plane: ControlPlane, *operations: Object) -> None:
    control_plane.kubectl(
        "patch",
        "mutatingwebhookconfiguration",
        CONFIGURATION,
        "--type=json",
        "-p",
        json.dumps(list(operations)),
    )


def creation_error(control_plane: ControlPlane) -> str:
    """Create a pod in the meshed namespace until it fails; the error (the API server's view)."""
    errors: list[str] = []

    def fails() -> bool:
        try:
            create(control_plane, MESHED, pod_manifest(f"probe-{uuid.uuid4().hex[:6]}"))
        except KubectlError as error:
            errors.append(error.stderr)
            return True
        return False

    control_plane.wait_for(fails, what="pod creation to fail", timeout=EFFECT_TIMEOUT)
    return errors[-1]


def write_leaf(cert_dir: Path, *, days: int, started_days_ago: float = 0.0) -> None:
    """A serving certificate under the directory's CA (key first, as ``certs`` writes)."""
    ca = certs.load_ca(cert_dir / "ca.crt", cert_dir / "ca.key")
    dns, ips = certs.service_names(SERVICE, NAMESPACE)
    leaf = certs.make_serving_cert(
        ca,
        dns_names=dns,
        ips=ips,
        days=days,
        now=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=started_days_ago),
    )
    (cert_dir / "tls.key").write_bytes(leaf.key_pem())
    (cert_dir / "tls.crt").write_bytes(leaf.cert_pem())


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
    done = _run_cli(control_plane)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    verdicts = [line for line in lines if line[:4] in ("PASS", "WARN", "FAIL", "SKIP")]
    assert len(verdicts) == 12, done.stdout
    assert any(line.startswith("WARN  replicas") for line in verdicts)
    assert any("hint: " in line for line in lines)  # the warning's hint
    assert lines[-1] == "11 passed, 1 warning, 0 failed, 0 skipped"


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
    other = base64.b64encode(certs.make_ca(common_name="some other CA").cert_pem()).decode()
    with configuration_restored(install):
        patch_configuration(
            control_plane,
            {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": other},
            {"op": "replace", "path": "/webhooks/1/clientConfig/caBundle", "value": other},
        )
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
        patch_configuration(
            control_plane,
            {"op": "remove", "path": "/webhooks/1/namespaceSelector/matchExpressions/1"},
        )
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


class PodCreator:
    """Creates pods in the meshed namespace back to back until stopped; records each outcome."""

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
            except KubectlError as error:
                self.outcomes.append(f"{name}: refused: {error.stderr.strip()}")
            else:
                self.outcomes.append(
                    f"{name}: {'injected' if is_injected(pod) else 'NOT injected'}"
                )

    def wait_for_more(self, count: int) -> None:
        """Until ``count`` more pods were created (so each step is really exercised)."""
        target = len(self.outcomes) + count
        self.control_plane.wait_for(
            lambda: len(self.outcomes) >= target, what=f"{count} more pods", timeout=60
        )


def _set_ca_bundle(control_plane: ControlPlane, pem: bytes) -> None:
    value = base64.b64encode(pem).decode()
    patch_configuration(
        control_plane,
        {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": value},
        {"op": "replace", "path": "/webhooks/1/clientConfig/caBundle", "value": value},
    )


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
    done = control_plane.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json")
    items = json.loads(done.stdout)["items"]
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
