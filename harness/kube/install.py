"""The real install on the e2e control plane, served by a local ``serve`` process.

The cluster tests should exercise what users apply, not a test-only webhook
configuration: the selectors, exclusions, ``failurePolicy`` and
``reinvocationPolicy`` that decide *whether* the apiserver calls us live in
``manifests/``, and a hand-written copy would drift from them. So this module
does what ``make manifests && make deploy`` does, with two substitutions a
control plane without kubelet forces on us:

- certificates and ``install.yaml`` go to a temporary directory (the repo's
  ``certs/`` and ``manifests/install.yaml`` are never touched), made by the
  same ``sidecar-injector certs`` command and ``scripts/render_install.py``;
- the Deployment is applied (so the apiserver validates it, and its pods are
  admitted under the ``restricted`` Pod Security level of ``mesh-system``) but
  its pods stay Pending; the Service is re-pointed at a ``sidecar-injector
  serve`` process on 127.0.0.1 instead, started with the install's own
  ConfigMap content and ``--kubeconfig`` so its namespace source is the
  watch-backed cache against this apiserver, as it is in a cluster.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness.kube.admin_api import ApiRefused
from harness.kube.control_plane import ControlPlane
from harness.server import CLI, Server, running_server
from harness.tls_client import https_get

REPO = Path(__file__).resolve().parents[2]
RENDER_SCRIPT = REPO / "scripts" / "render_install.py"

SERVICE = "sidecar-injector"
NAMESPACE = "mesh-system"
CONFIGURATION = "sidecar-injector"  # the MutatingWebhookConfiguration's name
NAMESPACE_WEBHOOK = "namespace.sidecar.mesh.io"
OBJECT_WEBHOOK = "object.sidecar.mesh.io"
PROXY = "mesh-proxy"
INIT = "mesh-init"

Object = dict[str, Any]


# --- pods -------------------------------------------------------------------------


def pod_manifest(
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    spec: Mapping[str, Any] | None = None,
) -> Object:
    """A minimal one-container Pod, ``spec`` merged into its spec; the image never runs
    (there is no kubelet)."""
    metadata: Object = {"name": name, "labels": {"app": name, **(labels or {})}}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
            **(spec or {}),
        },
    }


def container_names(pod: Object) -> list[str]:
    """Names of the pod's app-phase containers, in order."""
    return [c["name"] for c in pod["spec"].get("containers") or []]


def init_container_names(pod: Object) -> list[str]:
    """Names of the pod's init containers (native sidecars included), in order."""
    return [c["name"] for c in pod["spec"].get("initContainers") or []]


def is_injected(pod: Object) -> bool:
    """Whether the stored pod carries the proxy (as a container or a native sidecar)."""
    return PROXY in container_names(pod) + init_container_names(pod)


def create(control_plane: ControlPlane, namespace: str, manifest: Object) -> Object:
    """Create one object, as ``kubectl create`` does, and return what the apiserver stored.

    The create response *is* the persisted object, after every mutating
    webhook and validation ran; tests that want to see it come back from
    storage read it again with :func:`get_pod`. A refusal raises
    :class:`~harness.kube.admin_api.ApiRefused` with the API server's message.
    """
    return control_plane.admin_api().create(namespace, manifest)


def get_pod(control_plane: ControlPlane, namespace: str, name: str) -> Object:
    """The pod as stored, read back from the API server."""
    pod = control_plane.admin_api().get(f"/api/v1/namespaces/{namespace}/pods/{name}")
    if pod is None:
        raise AssertionError(f"no pod {namespace}/{name}")
    return pod


def wait_until_injecting(control_plane: ControlPlane, namespace: str, *, timeout: float) -> int:
    """Create canary pods in ``namespace`` until one comes back injected; return the count.

    The apiserver picks up webhook configurations, Services, EndpointSlices
    and namespace labels through informers, and the webhook learns namespace
    labels through its own watch: right after any of them changes, pods can
    still be admitted under the old state. A canary that is injected proves
    the whole chain is live. It is also an ordering barrier: the apiserver's
    namespace informer delivers events in resourceVersion order, so once a
    label written *after* another namespace change is seen, that change is too.
    """
    attempts: list[str] = []

    def injected_canary() -> bool:
        name = f"canary-{len(attempts)}"
        try:
            pod = create(control_plane, namespace, pod_manifest(name))
        except ApiRefused as error:
            attempts.append(f"{name}: {error.message}")
            return False
        attempts.append(f"{name}: containers {container_names(pod)}")
        return is_injected(pod)

    try:
        control_plane.wait_for(
            injected_canary, what=f"injection in {namespace}", timeout=timeout, interval=0.3
        )
    except Exception as error:
        raise AssertionError(f"{error}; canaries: {attempts}") from error
    return len(attempts)


# --- metrics ----------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsSnapshot:
    """The webhook's counters at one moment, to compare before and after an action."""

    requests: Mapping[tuple[str, str], float]
    decisions: Mapping[str, float]

    @classmethod
    def parse(cls, text: str) -> MetricsSnapshot:
        """From the Prometheus text exposition of ``/metrics``."""
        requests: dict[tuple[str, str], float] = {}
        decisions: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "sidecar_injector_requests_total":
                    key = (sample.labels["endpoint"], sample.labels["outcome"])
                    requests[key] = sample.value
                elif sample.name == "sidecar_injector_decisions_total":
                    decisions[sample.labels["code"]] = sample.value
        return cls(requests, decisions)

    def mutate_calls(self) -> float:
        """How many ``/mutate`` requests were answered, whatever the outcome."""
        return sum(v for (endpoint, _), v in self.requests.items() if endpoint == "mutate")

    def decided(self, code: str) -> float:
        """How many admissions ended with decision ``code``."""
        return self.decisions.get(code, 0.0)


# --- the install ------------------------------------------------------------------


def make_certs(out: Path) -> Path:
    """Certificates for the install's Service, from the real ``certs`` command."""
    subprocess.run(
        [CLI, "certs", "--out", str(out), "--service", SERVICE, "--namespace", NAMESPACE],
        check=True,
        capture_output=True,
    )
    return out


def render_install(certs: Path, out: Path, *, kubectl: str = "kubectl") -> list[Object]:
    """Run ``scripts/render_install.py`` on the repo's manifests; return the objects."""
    done = subprocess.run(
        [
            sys.executable,
            str(RENDER_SCRIPT),
            "--manifests",
            str(REPO / "manifests"),
            "--certs",
            str(certs),
            "--out",
            str(out),
            "--kubectl",
            kubectl,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"render_install.py failed: {done.stderr.strip()}")
    return [o for o in yaml.safe_load_all(out.read_text(encoding="utf-8")) if o]


def _one(objects: list[Object], kind: str) -> Object:
    found = [o for o in objects if o.get("kind") == kind]
    if len(found) != 1:
        raise RuntimeError(f"expected one {kind} in install.yaml, found {len(found)}")
    return found[0]


def service_port_name(objects: list[Object]) -> str:
    """The name of the Service port the webhooks call (port 443).

    The apiserver matches EndpointSlice ports to Service ports by name, so
    the loopback route must reuse the install's name, not assume one.
    """
    service = _one(objects, "Service")
    hook_port = _one(objects, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"][
        "service"
    ]["port"]
    for port in service["spec"]["ports"]:
        if port["port"] == hook_port:
            name: str = port.get("name", "")
            return name
    raise RuntimeError(f"the Service has no port {hook_port}")


def injector_config(objects: list[Object]) -> str:
    """The ``config.yaml`` the Deployment would mount, from the install's ConfigMap."""
    config: str = _one(objects, "ConfigMap")["data"]["config.yaml"]
    return config


class InstalledWebhook:
    """The rendered install applied to a control plane, served from this host.

    :meth:`start` and :meth:`close` own everything created: the temporary
    directory (certs, install.yaml, config, server logs), the ``serve``
    process, and the cluster objects. ``close`` is safe after a partial start.
    """

    def __init__(self, control_plane: ControlPlane) -> None:
        self.control_plane = control_plane
        self.workdir = Path(tempfile.mkdtemp(prefix="sidecar-injector-e2e-"))
        self.certs = self.workdir / "certs"
        self.install_file = self.workdir / "install.yaml"
        self.config_file = self.workdir / "config.yaml"
        self.objects: list[Object] = []
        self.port_name = ""
        self._server: Server | None = None
        self._server_stack = contextlib.ExitStack()
        self._starts = 0

    @property
    def server(self) -> Server:
        """The running ``serve`` process."""
        if self._server is None:
            raise RuntimeError("the webhook process is not running")
        return self._server

    def start(self) -> InstalledWebhook:
        """Make certs, render, apply, then start and route the local process."""
        make_certs(self.certs)
        self.objects = render_install(
            self.certs, self.install_file, kubectl=self.control_plane.kubectl_binary
        )
        self.port_name = service_port_name(self.objects)
        self.config_file.write_text(injector_config(self.objects), encoding="utf-8")
        self.control_plane.kubectl("apply", "-f", str(self.install_file))
        self.start_process()
        return self

    def start_process(self) -> Server:
        """Start ``serve`` on a free port and point the install's Service at it."""
        if self._server is not None:
            return self._server
        self._starts += 1
        self._server = self._server_stack.enter_context(
            running_server(
                self.workdir / f"serve-{self._starts}",
                cert_dir=self.certs,
                args=[
                    "--config",
                    str(self.config_file),
                    "--kubeconfig",
                    str(self.control_plane.kubeconfig),
                ],
            )
        )
        self.control_plane.route_service_to_loopback(
            NAMESPACE, SERVICE, port=self._server.port, port_name=self.port_name
        )
        return self._server

    def stop_process(self) -> None:
        """SIGTERM the ``serve`` process and wait for it (the install stays applied)."""
        self._server = None
        self._server_stack.close()

    def metrics(self) -> MetricsSnapshot:
        """Scrape ``/metrics`` over verified HTTPS."""
        status, body, _ = https_get(self.server.port, self.server.ca_file, "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return MetricsSnapshot.parse(body.decode())

    def server_log(self) -> str:
        """What the current ``serve`` process logged (for assertion messages)."""
        return self._server.log() if self._server is not None else "(not running)"

    def close(self) -> None:
        """Stop the process, remove the install from the cluster, delete the workdir.

        The webhook configuration goes first and synchronously: with
        ``failurePolicy: Fail`` and no server behind it, it would refuse pods
        of later tests that happen to use an enabled namespace.
        """
        try:
            self.stop_process()
        finally:
            try:
                self.control_plane.kubectl(
                    "delete",
                    "mutatingwebhookconfiguration",
                    CONFIGURATION,
                    "--ignore-not-found",
                    check=False,
                )
                if self.install_file.exists():
                    self.control_plane.kubectl(
                        "delete",
                        "-f",
                        str(self.install_file),
                        "--ignore-not-found",
                        # Waited for: the next install in this control plane
                        # (another test package on the same worker) creates the
                        # same namespace, which must not still be terminating.
                        "--wait=true",
                        "--timeout=180s",
                        check=False,
                    )
            finally:
                shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def installed_webhook(control_plane: ControlPlane) -> Iterator[InstalledWebhook]:
    """:class:`InstalledWebhook` started, and closed however the block ends."""
    install = InstalledWebhook(control_plane)
    try:
        yield install.start()
    finally:
        install.close()
