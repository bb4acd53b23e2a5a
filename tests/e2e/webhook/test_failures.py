"""Another webhook, races with labels, a namespace source cut off, PodSecurity, and our absence.

Everything below the HTTP edge is tested elsewhere with imitations of the
apiserver; these ask the real kube-apiserver. The install they share is in
``conftest.py``; whether the webhook was *called* is read from its ``/metrics``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import threading
from pathlib import Path

import pytest
import yaml

from harness.kube.admin_api import ApiRefused
from harness.kube.control_plane import ControlPlane
from harness.kube.install import (
    INIT,
    NAMESPACE,
    NAMESPACE_WEBHOOK,
    PROXY,
    SERVICE,
    InstalledWebhook,
    Object,
    container_names,
    create,
    get_pod,
    init_container_names,
    is_injected,
    pod_manifest,
    wait_until_injecting,
)
from harness.server import running_server
from tests.e2e.other_webhook import ADDED_CONTAINER, ContainerAddingWebhook
from tests.e2e.webhook.shared import EFFECT_TIMEOUT, ENABLED, Namespaces, unique

pytestmark = pytest.mark.cluster


# --- other webhooks, and our absence --------------------------------------------------------


def test_a_later_webhook_adding_a_container_leaves_exactly_one_injection(
    control_plane: ControlPlane,
    webhook: InstalledWebhook,
    namespaces: Namespaces,
) -> None:
    namespace = namespaces.create("layered", labels=ENABLED)
    configuration = f"zz-audit-{namespace}"
    with (
        tempfile.TemporaryDirectory(prefix="sidecar-injector-e2e-audit-") as certs,
        ContainerAddingWebhook(Path(certs), service_host=f"audit.{namespace}.svc") as other,
    ):
        control_plane.route_service_to_loopback(namespace, "audit", port=other.port)
        control_plane.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                other.configuration(name=configuration, namespace=namespace, service="audit")
            ),
        )
        try:
            # Canaries until both webhooks are live, then one pod to count calls on.
            control_plane.wait_for(
                lambda: (
                    ADDED_CONTAINER
                    in container_names(create(control_plane, namespace, pod_manifest(unique("c"))))
                ),
                what="the second webhook",
                timeout=EFFECT_TIMEOUT,
            )
            wait_until_injecting(control_plane, namespace, timeout=EFFECT_TIMEOUT)
            before = webhook.metrics()
            create(control_plane, namespace, pod_manifest("layered"))
            after = webhook.metrics()
        finally:
            control_plane.kubectl(
                "delete", "mutatingwebhookconfiguration", configuration, "--ignore-not-found"
            )
    stored = get_pod(control_plane, namespace, "layered")

    names = container_names(stored)
    assert (names + init_container_names(stored)).count(PROXY) == 1
    assert names.count(ADDED_CONTAINER) == 1
    assert init_container_names(stored).count(INIT) == 1
    assert "app" in names
    # Called once for that pod (reinvocationPolicy Never): the other
    # webhook's later change and the token mounts do not bring it back.
    assert after.mutate_calls() - before.mutate_calls() == 1
    assert after.decided("already-injected") == before.decided("already-injected")


# --- never unmeshed by accident ----------------------------------------------------------


def _deployment(name: str, namespace: str) -> Object:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
            },
        },
    }


def _pods(control_plane: ControlPlane, namespace: str) -> list[Object]:
    return control_plane.admin_api().items(f"/api/v1/namespaces/{namespace}/pods")


def test_a_label_set_in_the_same_second_as_a_deployment_is_honoured_20_times_out_of_20(
    control_plane: ControlPlane, webhook: InstalledWebhook, namespaces: Namespaces, meshed: str
) -> None:
    """Label a namespace and create a Deployment in one ``kubectl apply``, twenty times.

    The apiserver calls the webhook once its own informer sees the label;
    the webhook's watch may be a moment behind and still say "not opted
    in". Before skipping, the webhook reads the namespace from the API
    server, so every pod is injected whichever watch wins the race.
    """
    names = [namespaces.create("race") for _ in range(20)]
    recheck = 'sidecar_injector_namespace_fetches_total{reason="recheck",result="found"}'
    rechecks_before = webhook.server.metrics().get(recheck, 0.0)
    for name in names:
        labelled = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": ENABLED},
        }
        control_plane.kubectl(
            "apply", "-f", "-", input=yaml.safe_dump_all([labelled, _deployment("app", name)])
        )
    control_plane.wait_for(
        lambda: all(_pods(control_plane, name) for name in names),
        what="a pod from every Deployment",
        timeout=EFFECT_TIMEOUT * 2,
    )
    unmeshed = [
        f"{name}/{pod['metadata']['name']}"
        for name in names
        for pod in _pods(control_plane, name)
        if not is_injected(pod)
    ]
    rechecks = webhook.server.metrics().get(recheck, 0.0) - rechecks_before
    # How the race went this time, for whoever reads a failure: pods our
    # cache would have skipped had it not read the namespace again.
    assert unmeshed == [], f"unmeshed: {unmeshed}; rechecks that found the namespace: {rechecks}"


class ClosableProxy:
    """A TCP relay to the apiserver that can be cut and restored on the same port.

    The webhook's namespace source reaches the API server only through it:
    closing it breaks the open watch and refuses new connections, as a
    network partition or a dead API server would.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> ClosableProxy:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: same port again
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Refuse new connections and break every open one."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()


def _kubeconfig_via(control_plane: ControlPlane, port: int, path: Path) -> Path:
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(config))
    return path


def test_with_the_namespace_source_cut_off_a_pod_is_refused_with_our_message_then_admitted(
    control_plane: ControlPlane, webhook: InstalledWebhook, namespaces: Namespaces, meshed: str
) -> None:
    """Fail closed: a namespace the webhook cannot read is not a namespace without labels.

    The install's Service is pointed at a second ``serve`` whose only way to
    the API server is a relay the test cuts. A namespace created meanwhile
    is unknown to it, so its pod is refused, with a message naming the
    namespace; once the relay is back the same pod is admitted, injected.
    """
    upstream = int(control_plane.server.rsplit(":", 1)[1])
    proxy = ClosableProxy(upstream).start()
    webhook.stop_process()
    try:
        with tempfile.TemporaryDirectory(prefix="sidecar-injector-e2e-cut-") as scratch:
            kubeconfig = _kubeconfig_via(control_plane, proxy.port, Path(scratch) / "kubeconfig")
            with running_server(
                Path(scratch) / "serve",
                cert_dir=webhook.certs,
                args=["--config", str(webhook.config_file), "--kubeconfig", str(kubeconfig)],
            ) as server:
                control_plane.route_service_to_loopback(
                    NAMESPACE, SERVICE, port=server.port, port_name=webhook.port_name
                )
                wait_until_injecting(control_plane, meshed, timeout=EFFECT_TIMEOUT)

                proxy.cut()
                cut_off = namespaces.create("cut-off", labels=ENABLED)
                with pytest.raises(ApiRefused) as refused:
                    create(control_plane, cut_off, pod_manifest("while-cut"))
                message = refused.value.message
                assert f'admission webhook "{NAMESPACE_WEBHOOK}" denied the request' in message
                assert f"namespace {cut_off} could not be read" in message
                assert "refusing the pod rather than admitting it without its proxy" in message
                # Namespaces it already knew are still served from its cache.
                assert is_injected(create(control_plane, meshed, pod_manifest("cached-ok")))

                proxy.start()  # same port
                admitted: list[Object] = []

                def admitted_after_recovery() -> bool:
                    try:
                        admitted.append(create(control_plane, cut_off, pod_manifest("while-cut")))
                    except ApiRefused:
                        return False
                    return True

                control_plane.wait_for(
                    admitted_after_recovery, what="admission after recovery", timeout=EFFECT_TIMEOUT
                )
                assert is_injected(admitted[-1])
                unavailable = server.metrics()[
                    'sidecar_injector_decisions_total{code="namespace-unavailable"}'
                ]
                assert unavailable >= 1
    finally:
        proxy.cut()
        webhook.start_process()
        wait_until_injecting(control_plane, meshed, timeout=EFFECT_TIMEOUT)


def test_a_pod_in_a_restricted_pod_security_namespace_gets_our_message_on_kubectl_apply(
    control_plane: ControlPlane, namespaces: Namespaces, meshed: str
) -> None:
    """Without our refusal PodSecurity rejects the injected pod, never mentioning the mesh."""
    restricted = namespaces.create(
        "restricted", labels={**ENABLED, "pod-security.kubernetes.io/enforce": "restricted"}
    )
    done = control_plane.kubectl(
        "-n", restricted, "apply", "-f", "-", input=json.dumps(pod_manifest("psa")), check=False
    )
    assert done.returncode != 0
    assert f'admission webhook "{NAMESPACE_WEBHOOK}" denied the request' in done.stderr
    assert restricted in done.stderr
    assert "restricted" in done.stderr
    assert "NET_ADMIN" in done.stderr


def test_with_the_webhook_process_stopped_enabled_namespaces_refuse_pods_and_others_do_not(
    control_plane: ControlPlane, webhook: InstalledWebhook, namespaces: Namespaces, meshed: str
) -> None:
    """The process is started again at the end, for the tests that share the install."""
    plain = namespaces.create("unaffected")
    webhook.stop_process()
    try:
        _refused_while_down(control_plane, meshed, plain)
    finally:
        webhook.start_process()
        wait_until_injecting(control_plane, meshed, timeout=EFFECT_TIMEOUT)


def _refused_while_down(control_plane: ControlPlane, meshed: str, plain: str) -> None:
    """With no process behind the Service: meshed pods refused, the others created."""
    with pytest.raises(ApiRefused) as refused:
        create(control_plane, meshed, pod_manifest("while-down"))
    message = refused.value.message
    # What a user sees: the webhook's name, the Service URL the install
    # configures (with its timeoutSeconds), and why the call failed.
    assert "Internal error occurred" in message
    assert f'failed calling webhook "{NAMESPACE_WEBHOOK}"' in message
    assert f'Post "https://{SERVICE}.{NAMESPACE}.svc:443/mutate?timeout=5s"' in message
    assert "connection refused" in message

    elsewhere = create(control_plane, plain, pod_manifest("elsewhere"))
    assert container_names(elsewhere) == ["app"]
    # The objectSelector keeps opted-out pods away from the webhook, so they
    # can still be created in an enabled namespace while it is down.
    opted_out = create(
        control_plane,
        meshed,
        pod_manifest("opted-out-while-down", labels={"sidecar.mesh.io/inject": "false"}),
    )
    assert container_names(opted_out) == ["app"]
