"""Smoke tests for the e2e control plane fixture itself.

If these fail, every e2e test of the webhook would fail for reasons that have
nothing to do with the webhook, so they check exactly what those tests rely
on: kubectl access, controllers that turn Deployments into Pods, service
account tokens, webhook calls routed through a Service to a loopback
endpoint, and a teardown that leaves nothing behind.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.kube.binaries import ControlPlaneError
from harness.kube.control_plane import ControlPlane, KubectlError
from harness.kube.pki import write_serving_cert

pytestmark = pytest.mark.cluster


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _apply(cp: ControlPlane, *documents: dict[str, Any]) -> None:
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (our temp dir is in every argv)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_kubectl_with_the_admin_kubeconfig_lists_the_builtin_namespaces(
    control_plane: ControlPlane,
) -> None:
    names = control_plane.kubectl("get", "namespaces", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system"} <= set(names)


def test_a_deployment_becomes_a_replicaset_and_pending_pods(control_plane: ControlPlane) -> None:
    namespace = _unique("deploy")
    control_plane.create_namespace(namespace)
    labels = {"app": "smoke"}
    _apply(
        control_plane,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "smoke", "namespace": namespace},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    # Never pulled: there is no kubelet.
                    "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
                },
            },
        },
    )

    def pods() -> list[dict[str, Any]]:
        listing = control_plane.kubectl("-n", namespace, "get", "pods", "-o", "json").stdout
        items: list[dict[str, Any]] = json.loads(listing)["items"]
        return items

    control_plane.wait_for(lambda: len(pods()) == 2, what="two pods of the Deployment")
    replicasets = control_plane.kubectl("-n", namespace, "get", "replicasets", "-o", "name")
    assert replicasets.stdout.count("replicaset.apps/smoke-") == 1
    assert {pod["status"].get("phase") for pod in pods()} == {"Pending"}


def test_a_service_account_token_authenticates_as_that_account(
    control_plane: ControlPlane,
) -> None:
    namespace = _unique("token")
    control_plane.create_namespace(namespace)
    token = control_plane.kubectl("-n", namespace, "create", "token", "default").stdout.strip()

    review = json.dumps(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - the fixture's loopback apiserver
        f"{control_plane.server}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        data=review,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=str(control_plane.ca_file))
    with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
        user = json.load(response)["status"]["userInfo"]["username"]
    assert user == f"system:serviceaccount:{namespace}:default"


class _FakeWebhook:
    """An HTTPS server that labels every pod it is asked about, and remembers."""

    def __init__(self, directory: Path, *, service_host: str) -> None:
        self.ca_file, cert, key = write_serving_cert(
            directory, dns_names=[service_host], ip_addresses=()
        )
        self.paths: list[str] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.paths.append(self.path)
                uid = json.loads(body)["request"]["uid"]
                patch = [{"op": "add", "path": "/metadata/labels/e2e-routed", "value": "yes"}]
                answer = json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {
                            "uid": uid,
                            "allowed": True,
                            "patchType": "JSONPatch",
                            "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                        },
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _FakeWebhook:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def routed_namespace(control_plane: ControlPlane) -> Iterator[str]:
    namespace = _unique("routed")
    control_plane.create_namespace(namespace)
    yield namespace
    control_plane.kubectl(
        "delete", "mutatingwebhookconfiguration", namespace, "--ignore-not-found", check=False
    )


def test_a_webhook_service_is_reached_through_its_endpointslice_on_loopback(
    control_plane: ControlPlane, routed_namespace: str, tmp_path: Path
) -> None:
    """The pattern e2e tests use to put a local webhook behind a Service.

    See ``ControlPlane.route_service_to_loopback`` for why it works; the
    fake webhook's certificate names only ``<service>.<namespace>.svc``, so
    the call also proves the apiserver verifies the service name, not the IP.
    """
    namespace = routed_namespace
    with _FakeWebhook(tmp_path, service_host=f"fake-hook.{namespace}.svc") as hook:
        control_plane.route_service_to_loopback(namespace, "fake-hook", port=hook.port)
        _apply(
            control_plane,
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": namespace},
                "webhooks": [
                    {
                        "name": "fake-hook.e2e.test",
                        "admissionReviewVersions": ["v1"],
                        "sideEffects": "None",
                        "failurePolicy": "Fail",
                        "timeoutSeconds": 10,
                        "clientConfig": {
                            "service": {
                                "namespace": namespace,
                                "name": "fake-hook",
                                "port": 443,
                                "path": "/mutate",
                            },
                            "caBundle": base64.b64encode(hook.ca_file.read_bytes()).decode(),
                        },
                        "rules": [
                            {
                                "operations": ["CREATE"],
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "resources": ["pods"],
                            }
                        ],
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": namespace}
                        },
                    }
                ],
            },
        )

        # The apiserver learns about new webhook configurations through an
        # informer, so the first pods may be admitted before it is active.
        attempts: list[str] = []

        def labelled_pod_created() -> bool:
            name = f"probe-{len(attempts)}"
            attempts.append(name)
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": {"app": "probe"}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            }
            try:
                created = control_plane.kubectl(
                    "create", "-o", "json", "-f", "-", input=json.dumps(pod)
                )
            except KubectlError as error:
                attempts[-1] += f": {error.stderr.strip()}"
                return False
            return bool(json.loads(created.stdout)["metadata"]["labels"].get("e2e-routed"))

        try:
            control_plane.wait_for(
                labelled_pod_created, what="a pod mutated by the fake webhook", interval=0.5
            )
        except ControlPlaneError as error:
            raise AssertionError(f"{error}; attempts: {attempts}") from error
        assert hook.paths
        assert all(path.startswith("/mutate") for path in hook.paths)


def test_stop_leaves_no_process_and_no_temp_dir(
    control_plane_bin_dir: Path, tmp_path: Path
) -> None:
    cluster = ControlPlane(bin_dir=control_plane_bin_dir, temp_root=tmp_path)
    with cluster:
        pids = cluster.pids()
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
        workdir = cluster.workdir
    for name, pid in pids.items():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert name
    assert not workdir.exists()
    assert list(tmp_path.iterdir()) == []
    assert _processes_mentioning(str(tmp_path)) == []


def test_a_failed_start_cleans_up_and_reports_the_component_log(
    control_plane_bin_dir: Path, tmp_path: Path
) -> None:
    cluster = ControlPlane(
        bin_dir=control_plane_bin_dir,
        temp_root=tmp_path,
        extra_apiserver_args=["--no-such-flag-for-e2e"],
    )
    with pytest.raises(ControlPlaneError) as failure:
        cluster.start()
    message = str(failure.value)
    assert "kube-apiserver exited" in message
    assert "no-such-flag-for-e2e" in message
    assert cluster.pids() == {}
    assert list(tmp_path.iterdir()) == []
    assert _processes_mentioning(str(tmp_path)) == []
