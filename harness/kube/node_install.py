"""The product installed on the real node the way the README tells users, and tools for tests.

:class:`NodeInstall` does what ``make manifests && make deploy`` does, into a
temporary directory (the repository's ``certs/`` and ``manifests/install.yaml``
are never touched): ``sidecar-injector certs`` for the install's Service,
``scripts/render_install.py`` over ``manifests/``, ``kubectl apply -f`` of the
result, then ``kubectl rollout status`` of the Deployment. Nothing is replaced
or patched: two replicas run from the image built by :mod:`harness.kube.images`,
as the ``sidecar-injector`` ServiceAccount with the install's RBAC, with
their certificates from the Secret volume, Ready through ``/readyz``, and the
apiserver calls them through the Service's cluster IP (kube-proxy).

Also here, because several tests need them: Deployments and pods of the
busybox test image, reading Envoy's own counters from a pod's ``mesh-proxy``
with ``kubectl exec`` (bash's ``/dev/tcp`` to the admin port, 127.0.0.1:15000,
which is not reachable from outside the pod), and :class:`PodStream`, which
creates pods back to back from a few threads and records every outcome.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from harness.kube.admin_api import ApiRefused
from harness.kube.images import BUSYBOX_TAG
from harness.kube.install import (
    CONFIGURATION,
    INIT,
    NAMESPACE,
    PROXY,
    is_injected,
    make_certs,
    render_install,
)
from harness.kube.node import Node, NodeError
from harness.tls_client import connect, peer_fingerprint
from webhook.contract.constants import STATUS_ANNOTATION
from webhook.engine.bootstrap import INBOUND_STATS, OUTBOUND_PASSTHROUGH, OUTBOUND_STATS

Object = dict[str, Any]

DEPLOYMENT: Final = "sidecar-injector"
SECRET: Final = "sidecar-injector-tls"  # noqa: S105 - an object name, not a password
INJECTOR_SELECTOR: Final = "app.kubernetes.io/name=sidecar-injector"
# Pods that must never start: no scheduler answers to this name, so they
# stay Pending (admission, which is what such tests measure, is done by then).
UNSCHEDULED: Final = "sidecar-injector-e2e-unscheduled"
APP_PORT: Final = 8080
ENVOY_ADMIN: Final = 15000


class NodeInstall:
    """The rendered install applied to a :class:`Node`; :meth:`close` removes it."""

    def __init__(self, node: Node, *, config_overrides: Mapping[str, Any] | None = None) -> None:
        self.node = node
        # Merged into the install's injector config (config.yaml in its
        # ConfigMap) before applying; empty for the tests, which run the
        # install exactly as rendered.
        self.config_overrides = dict(config_overrides or {})
        self.workdir = Path(tempfile.mkdtemp(prefix="sidecar-injector-node-install-"))
        self.certs = self.workdir / "certs"
        self.install_file = self.workdir / "install.yaml"
        self.objects: list[Object] = []

    @property
    def ca_file(self) -> Path:
        """The CA the webhook configuration's caBundle holds."""
        return self.certs / "ca.crt"

    def deploy(self, *, timeout: float = 240.0) -> NodeInstall:
        """Certs, render, apply, and wait as ``make deploy`` does, then until pods are injected."""
        make_certs(self.certs)
        self.objects = render_install(
            self.certs, self.install_file, kubectl=self.node.control_plane.kubectl_binary
        )
        if self.config_overrides:
            self._override_config()
        self.node.kubectl("apply", "-f", str(self.install_file))
        self.node.kubectl(
            "-n", NAMESPACE, "rollout", "status", f"deployment/{DEPLOYMENT}",
            f"--timeout={int(timeout)}s", timeout=timeout + 30,
        )  # fmt: skip
        self.wait_until_injecting(timeout=timeout)
        return self

    def _override_config(self) -> None:
        (config_map,) = [o for o in self.objects if o.get("kind") == "ConfigMap"]
        config = yaml.safe_load(config_map["data"]["config.yaml"])
        config_map["data"]["config.yaml"] = yaml.safe_dump(
            _merged(config, self.config_overrides), sort_keys=False
        )
        self.install_file.write_text(yaml.safe_dump_all(self.objects), encoding="utf-8")
        self.install_file.chmod(0o600)

    def wait_until_injecting(self, *, timeout: float = 120.0) -> None:
        """Poll server-side dry-run pod creations until one comes back injected.

        The rollout is done when the pods are Ready, but the apiserver reaches
        them through the Service, whose endpoints reach kube-proxy a moment
        later. A dry run goes through admission like a real creation and
        stores nothing, so nothing is left to clean up.
        """
        namespace = "sidecar-injector-e2e-canary"
        api = self.node.control_plane.admin_api()
        if api.get(f"/api/v1/namespaces/{namespace}") is None:
            self.node.control_plane.create_namespace(
                namespace, labels={"sidecar-injection": "enabled"}
            )
        errors: list[str] = []

        def injected() -> bool:
            try:
                pod = api.create(namespace, pod_manifest("canary", command=["true"]), dry_run=True)
            except ApiRefused as error:
                errors.append(error.message)
                return False
            return is_injected(pod)

        try:
            self.node.wait_for(injected, what="injection through the Service", timeout=timeout)
        except Exception as error:
            raise NodeError(f"{error}; last errors: {errors[-3:]}") from error

    def injector_pods(self) -> list[Object]:
        """The injector's pods, as stored."""
        return pods(self.node, NAMESPACE, INJECTOR_SELECTOR)

    def rotate_certificate(self) -> str:
        """A new serving certificate from the same CA, written into the Secret.

        Same CA, so the caBundle stays valid: what a renewal looks like
        (``sidecar-injector certs`` reuses the CA it finds). Returns the new
        certificate's SHA-256 fingerprint, which is what a handshake shows.
        """
        make_certs(self.certs)
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NAMESPACE},
            "type": "kubernetes.io/tls",
            "data": {
                name: base64.b64encode((self.certs / name).read_bytes()).decode("ascii")
                for name in ("tls.crt", "tls.key", "ca.crt")
            },
        }
        self.node.kubectl("apply", "-f", "-", input=json.dumps(secret))
        cert = x509.load_pem_x509_certificate((self.certs / "tls.crt").read_bytes())
        return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()

    def serving_fingerprint(self, pod_ip: str) -> str:
        """The certificate an injector pod serves right now, verified as the apiserver does."""
        with connect(8443, self.ca_file, host=pod_ip) as sock:
            return peer_fingerprint(sock)

    def close(self) -> None:
        """Remove the webhook configuration first (failurePolicy Fail), then the rest.

        Waits until the rest is gone, its namespace included: the node goes on
        serving the tests after these, which may install into that namespace.
        """
        try:
            self.node.kubectl(
                "delete", "mutatingwebhookconfiguration", CONFIGURATION, "--ignore-not-found",
                check=False,
            )  # fmt: skip
            if self.install_file.exists():
                self.node.kubectl(
                    "delete", "-f", str(self.install_file), "--ignore-not-found",
                    "--timeout=300s", check=False, timeout=330,
                )  # fmt: skip
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, recursively for nested mappings."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


@contextlib.contextmanager
def node_install(
    node: Node, *, config_overrides: Mapping[str, Any] | None = None
) -> Iterator[NodeInstall]:
    """:class:`NodeInstall` deployed, and removed however the block ends."""
    install = NodeInstall(node, config_overrides=config_overrides)
    try:
        yield install.deploy()
    finally:
        install.close()


# --- workloads ----------------------------------------------------------------------


def pod_spec(command: list[str], *, restart_policy: str = "Always") -> Object:
    """A one-container spec on the busybox test image (no probes, no requests)."""
    return {
        "restartPolicy": restart_policy,
        # Killed pods should go quickly in tests; the proxy drains within this.
        "terminationGracePeriodSeconds": 10,
        "containers": [
            {
                "name": "app",
                "image": BUSYBOX_TAG,
                "imagePullPolicy": "Never",
                "command": command,
            }
        ],
    }


def pod_manifest(
    name: str, *, command: list[str], labels: Mapping[str, str] | None = None
) -> Object:
    """A Pod running ``command`` in the busybox test image."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name, **(labels or {})}},
        "spec": pod_spec(command),
    }


HTTP_SERVER: Final = [
    "sh",
    "-c",
    # Answers with the pod's name, so a client can tell which pod it reached.
    f"mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p {APP_PORT} -h /tmp/www",
]
SLEEPER: Final = ["sleep", "3600"]


def deployment_manifest(name: str, *, replicas: int, command: list[str]) -> Object:
    """A Deployment of busybox pods running ``command``."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec(command)},
        },
    }


def apply(node: Node, namespace: str, manifest: Object) -> None:
    """``kubectl apply`` one object into ``namespace``."""
    node.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(manifest))


def pods(node: Node, namespace: str, selector: str) -> list[Object]:
    """Pods matching a label selector."""
    api = node.control_plane.admin_api()
    return api.items(f"/api/v1/namespaces/{namespace}/pods", selector=selector)


def container_status(pod: Object, name: str) -> Object | None:
    """The status of container ``name``, whether it is an init or an app container."""
    status = pod.get("status") or {}
    for entry in (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or []
    ):
        if entry["name"] == name:
            found: Object = entry
            return found
    return None


def is_ready(pod: Object) -> bool:
    """Phase Running and condition Ready."""
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    return status.get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


def wait_ready(
    node: Node, namespace: str, selector: str, count: int, *, timeout: float = 180.0
) -> list[Object]:
    """Wait until exactly ``count`` pods match and all are Ready; return them."""
    found: list[Object] = []

    def ready() -> bool:
        nonlocal found
        found = [
            p for p in pods(node, namespace, selector) if not p["metadata"].get("deletionTimestamp")
        ]
        return len(found) == count and all(is_ready(p) for p in found)

    try:
        node.wait_for(ready, what=f"{count} ready pods {selector} in {namespace}", timeout=timeout)
    except Exception as error:
        raise AssertionError(f"{error}\n{describe_pods(found)}") from error
    return found


def describe_pods(found: list[Object]) -> str:
    """One line per pod and container state, for assertion messages."""
    lines = []
    for pod in found:
        status = pod.get("status") or {}
        lines.append(f"{pod['metadata']['name']}: phase {status.get('phase')}")
        for entry in (status.get("initContainerStatuses") or []) + (
            status.get("containerStatuses") or []
        ):
            lines.append(
                f"  {entry['name']}: ready={entry.get('ready')} state={entry.get('state')}"
            )
    return "\n".join(lines)


def exec_in(node: Node, namespace: str, pod: str, container: str, *command: str) -> str:
    """``kubectl exec`` (through the apiserver and the kubelet) and return stdout."""
    done = node.kubectl("-n", namespace, "exec", pod, "-c", container, "--", *command, timeout=60)
    return done.stdout


def envoy_stats(node: Node, namespace: str, pod: str) -> dict[str, int]:
    """Envoy's counters and gauges from the pod's ``mesh-proxy`` admin endpoint.

    Read inside the container (bash's ``/dev/tcp``: the image has no curl),
    since the admin port listens on the pod's loopback only.
    """
    # base64 keeps the HTTP framing byte-exact through kubectl's text output.
    script = (
        f"exec 3<>/dev/tcp/127.0.0.1/{ENVOY_ADMIN} && "
        "printf 'GET /stats HTTP/1.1\\r\\nHost: admin\\r\\nConnection: close\\r\\n\\r\\n' >&3 && "
        "base64 -w0 <&3"
    )
    raw = base64.b64decode(exec_in(node, namespace, pod, PROXY, "bash", "-c", script))
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    text = (head + b"\n\n" + body).decode(errors="replace")
    stats: dict[str, int] = {}
    for line in body.decode(errors="replace").splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.strip().isdigit():
            stats[name.strip()] = int(value)
    if not stats:
        raise AssertionError(f"no stats from {namespace}/{pod}: {text[:300]!r}")
    return stats


def _dechunk(body: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body (Envoy's admin always chunks /stats)."""
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


# --- creating pods continuously -------------------------------------------------------


@dataclass
class Outcome:
    """One pod creation: its name, whether it succeeded and was injected, the error if not."""

    name: str
    started: float
    finished: float
    ok: bool
    injected: bool = False
    error: str = ""
    revision: str | None = None  # the revision its status annotation records


@dataclass
class PodStream:
    """Creates pods from ``threads`` threads until :meth:`stop`, each ``interval`` after the last.

    Through the Python Kubernetes client (one kubectl process per pod would
    cost more CPU than the whole admission path). The pods are real, stored
    objects in ``namespace``, admitted by the webhook like any other, but
    nothing runs them (their ``schedulerName`` has no scheduler), so
    hundreds cost no more than their admission. Paced rather than back to
    back: a creation is sent every few tens of milliseconds, so an outage
    of the injector of any length that matters is met by several, while the
    node keeps the CPU it needs for the rollouts under test (back to back,
    the stream took both cores and stored thousands of pods a minute).
    """

    kubeconfig: Path
    namespace: str
    threads: int = 2
    interval: float = 0.05
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)
    _counter: int = 0

    def start(self) -> PodStream:
        """Start the threads."""
        from kubernetes import client, config

        api_client = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        api_client.configuration.connection_pool_maxsize = self.threads
        api = client.CoreV1Api(api_client)
        for index in range(self.threads):
            worker = threading.Thread(
                target=self._run, args=(api,), name=f"pod-stream-{index}", daemon=True
            )
            worker.start()
            self._workers.append(worker)
        return self

    def _next_name(self) -> str:
        with self._lock:
            self._counter += 1
            return f"stream-{self._counter:05d}"

    def _run(self, api: Any) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        while not self._stop.is_set():
            name = self._next_name()
            body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "stream"}},
                "spec": {**pod_spec(SLEEPER), "schedulerName": UNSCHEDULED},
            }
            started = time.monotonic()
            try:
                response = api.create_namespaced_pod(self.namespace, body, _preload_content=False)
                pod = json.loads(response.data)
            except ApiException as error:
                outcome = Outcome(
                    name, started, time.monotonic(), ok=False, error=_api_error(error)
                )
            except (HTTPError, OSError) as error:
                outcome = Outcome(name, started, time.monotonic(), ok=False, error=repr(error))
            else:
                outcome = Outcome(
                    name,
                    started,
                    time.monotonic(),
                    ok=True,
                    injected=is_injected(pod),
                    revision=recorded_revision(pod),
                )
            with self._lock:
                self.outcomes.append(outcome)
            self._stop.wait(self.interval)

    def count(self) -> int:
        """Creations finished so far (successful or not)."""
        with self._lock:
            return len(self.outcomes)

    def stop(self) -> list[Outcome]:
        """Stop the threads (each finishes its current creation) and return every outcome."""
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)
        with self._lock:
            return list(self.outcomes)


def recorded_revision(pod: Object) -> str | None:
    """The revision the pod's status annotation records (``default`` when it names none)."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(STATUS_ANNOTATION)
    if raw is None:
        return None
    found = json.loads(raw).get("revision", "default")
    return str(found)


def _api_error(error: Any) -> str:
    try:
        message = json.loads(error.body).get("message", "")
    except (TypeError, ValueError):
        message = str(error.body)
    return f"{error.status}: {message}"


def summarize(outcomes: list[Outcome], *, origin: float | None = None) -> str:
    """Counts and the first few failures, for assertion messages.

    With ``origin`` (a ``time.monotonic()`` value, e.g. when a rollout
    began), each failure says when it was sent relative to it.
    """
    failed = [o for o in outcomes if not o.ok]
    plain = [o for o in outcomes if o.ok and not o.injected]
    head = f"{len(outcomes)} creations, {len(failed)} failed, {len(plain)} not injected"

    def when(outcome: Outcome) -> str:
        return "" if origin is None else f" (sent at {outcome.started - origin:+.1f}s)"

    details = [f"  {o.name}{when(o)}: {o.error}" for o in failed[:5]]
    details += [f"  {o.name}: created without {PROXY}/{INIT}" for o in plain[:5]]
    return "\n".join([head, *details])


def injector_pod_names(install: NodeInstall) -> set[str]:
    """Names of the injector's pods that exist now (terminating ones included)."""
    return {p["metadata"]["name"] for p in install.injector_pods()}


def delete_namespace(node: Node, name: str) -> None:
    """Delete a test namespace without waiting (its pods go with it)."""
    node.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False)


def serves_through_both_proxies(node: Node, namespace: str, *, native: bool) -> None:
    """A meshed Deployment of two HTTP servers and a client pod in ``namespace`` (opted in):
    every pod injected (the proxy an init container in native mode), mesh-init
    Completed, mesh-proxy Ready; three requests from the client each pass the
    client's outbound listener and passthrough cluster and the server's inbound
    listener, counted by Envoy itself."""
    apply(node, namespace, deployment_manifest("web", replicas=2, command=HTTP_SERVER))
    apply(node, namespace, pod_manifest("client", command=SLEEPER))
    servers = wait_ready(node, namespace, "app=web", 2)
    (client,) = wait_ready(node, namespace, "app=client", 1)

    for pod in [*servers, client]:
        assert is_injected(pod), pod["metadata"]["name"]
        init_names = [c["name"] for c in pod["spec"]["initContainers"]]
        # Native: the proxy is an init container the kubelet keeps running.
        assert (PROXY in init_names) is native, init_names
        init = container_status(pod, INIT)
        assert init is not None, describe_pods([pod])
        terminated = init["state"].get("terminated") or {}
        assert (terminated.get("exitCode"), terminated.get("reason")) == (0, "Completed"), init
        proxy = container_status(pod, PROXY)
        assert proxy is not None
        assert (proxy["ready"], proxy["restartCount"]) == (True, 0), proxy

    target = servers[0]
    name, ip = target["metadata"]["name"], target["status"]["podIP"]
    client_name = client["metadata"]["name"]
    inbound = f"listener.{INBOUND_STATS}.downstream_cx_total"
    outbound = f"listener.{OUTBOUND_STATS}.downstream_cx_total"
    passthrough = f"cluster.{OUTBOUND_PASSTHROUGH}.upstream_cx_total"
    client_before = envoy_stats(node, namespace, client_name)
    server_before = envoy_stats(node, namespace, name)
    requests = 3
    for _ in range(requests):
        body = exec_in(
            node, namespace, client_name, "app", "wget", "-q", "-O-", f"http://{ip}:{APP_PORT}/"
        )
        assert body.strip() == name
    # Counters move as connections are accepted; poll, then demand the
    # exact count: one connection per request through each proxy, and
    # nothing else (the app has no probes that could add any).
    expected = {
        "client outbound": (client_name, outbound, client_before.get(outbound, 0) + requests),
        "client upstream": (
            client_name,
            passthrough,
            client_before.get(passthrough, 0) + requests,
        ),
        "server inbound": (name, inbound, server_before.get(inbound, 0) + requests),
    }
    seen: dict[str, int] = {}

    def counted() -> bool:
        for label, (pod_name, stat, want) in expected.items():
            seen[label] = envoy_stats(node, namespace, pod_name).get(stat, 0)
            if seen[label] < want:
                return False
        return True

    node.wait_for(counted, what="Envoy's counters to show the requests", timeout=60)
    assert seen == {label: want for label, (_, _, want) in expected.items()}
