"""A throwaway Kubernetes control plane on loopback, for e2e tests and the benchmarks.

The webhook's real client is kube-apiserver: it decides when to call, which
``AdmissionReview`` version to send, how to verify the serving certificate and
what to do with the patch. Unit tests can only imitate that, so the e2e tests
run a real etcd, kube-apiserver and kube-controller-manager (Deployments become
ReplicaSets become Pods, namespaces get their ``default`` ServiceAccount). There
is no scheduler, kubelet or kube-proxy: pods stay Pending, which is all an
admission webhook needs.

Every run gets fresh certificates, free ports and a temporary directory, and
``stop()`` removes all of it, including when ``start()`` fails halfway; a
failed start raises :class:`ControlPlaneError` with the tail of each
component's log, because "timed out waiting for /readyz" alone explains
nothing.

Binaries: :mod:`harness.kube.binaries`; certificates: :mod:`harness.kube.pki`.

A webhook under test runs on the test host and is registered the way a real
install registers it, through a Service::

    control_plane.create_namespace("meshed", labels={"sidecar-injection": "enabled"})
    control_plane.route_service_to_loopback("mesh-system", "sidecar-injector", port=8443)
    control_plane.kubectl("apply", "-f", "webhook-configuration.yaml")

(``clientConfig.url: https://127.0.0.1:<port>/mutate`` works too, but skips
the Service path the install uses.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from cryptography.x509.oid import ExtendedKeyUsageOID

from harness.kube.admin_api import AdminApi
from harness.kube.binaries import ControlPlaneError, etcd_binary
from harness.kube.pki import (
    ADMIN_USER,
    SERVICE_CLUSTER_IP_RANGE,
    Pair,
    issue,
    kubeconfig_file,
    name,
    write_control_plane_pki,
)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

_LOG_TAIL_LINES = 30


class KubectlError(subprocess.CalledProcessError):
    """A kubectl call failed; unlike its base class, ``str()`` shows stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}"


def free_port() -> int:
    """A port the kernel just considered free on 127.0.0.1.

    Another process could take it before our child binds it; that race is
    why a bind failure shows up in the startup error with the component log.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def loopback_service(
    namespace: str, name: str, *, port: int, service_port: int, port_name: str
) -> list[dict[str, Any]]:
    """A selector-less Service and an FQDN EndpointSlice sending it to ``127.0.0.1:port``.

    See :meth:`ControlPlane.route_service_to_loopback` for why each detail matters.
    """
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            # No selector: the endpoints are ours, not a controller's.
            "spec": {"ports": [{"name": port_name, "port": service_port, "targetPort": port}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-loopback",
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": "sidecar-injector-e2e",
                },
            },
            "addressType": "FQDN",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        },
    ]


@dataclass
class _Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1.

    Use as a context manager, or call :meth:`start` and :meth:`stop` (both
    idempotent; ``stop`` is safe after a failed ``start``)::

        with ControlPlane(bin_dir=build_binaries()) as cp:
            cp.kubectl("get", "namespaces")
    """

    def __init__(
        self,
        *,
        bin_dir: Path,
        etcd: Path | None = None,
        kubectl_binary: str = "kubectl",
        startup_timeout: float = 120.0,
        extra_apiserver_args: Sequence[str] = (),
        temp_root: Path | None = None,
    ) -> None:
        self.bin_dir = bin_dir
        self.etcd = etcd if etcd is not None else etcd_binary()
        self.kubectl_binary = kubectl_binary
        self.startup_timeout = startup_timeout
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        self.temp_root = temp_root
        self._workdir: Path | None = None
        self._components: list[_Component] = []
        self._port = 0
        self._ca: Pair | None = None
        self._admin: AdminApi | None = None

    # -- public surface --

    @property
    def workdir(self) -> Path:
        """The temporary directory with certificates, data and logs."""
        if self._workdir is None:
            raise ControlPlaneError("the control plane is not running")
        return self._workdir

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (group system:masters), valid while running."""
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        """The CA that signed the apiserver's serving and client certificates."""
        return self.workdir / "ca.crt"

    @property
    def server(self) -> str:
        """The apiserver URL, e.g. ``https://127.0.0.1:38211``."""
        if not self._port:
            raise ControlPlaneError("the control plane is not running")
        return f"https://127.0.0.1:{self._port}"

    def pids(self) -> dict[str, int]:
        """Component name -> pid, for tests that check teardown."""
        return {c.name: c.process.pid for c in self._components}

    def log_path(self, component: str) -> Path:
        """Where ``etcd``, ``kube-apiserver`` or ``kube-controller-manager`` logs."""
        return self.workdir / f"{component}.log"

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane and capture its output.

        ``--kubeconfig`` is passed explicitly so a developer's own KUBECONFIG
        can never point a test at a real cluster.
        """
        command = [
            self.kubectl_binary,
            f"--kubeconfig={self.kubeconfig}",
            # Discovery is cached per host:port; a later control plane may
            # reuse the port with other APIs, so keep the cache per instance.
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        result = subprocess.run(
            command,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, command, result.stdout, result.stderr)
        return result

    def admin_api(self) -> AdminApi:
        """The API as the admin without a kubectl process (:mod:`harness.kube.admin_api`)."""
        if self._admin is None:
            self._admin = AdminApi(self)
        return self._admin

    def create_namespace(self, name: str, *, labels: dict[str, str] | None = None) -> None:
        """Create a namespace and wait until pods can be created in it.

        The ServiceAccount admission plugin refuses pods until the
        controller-manager has created the namespace's ``default``
        ServiceAccount, which takes a moment after the namespace appears.
        """
        api = self.admin_api()
        manifest = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": dict(labels or {})},
        }
        api.create(None, manifest)
        self.wait_for(
            lambda: api.get(f"/api/v1/namespaces/{name}/serviceaccounts/default") is not None,
            what=f"the default ServiceAccount in namespace {name}",
            interval=0.05,
        )

    def route_service_to_loopback(
        self,
        namespace: str,
        name: str,
        *,
        port: int,
        service_port: int = 443,
        port_name: str = "https",
    ) -> None:
        """Create Service ``name`` whose traffic goes to ``127.0.0.1:port``.

        This is how a webhook running on the test host is put behind a
        Service, as a real install does. kube-apiserver runs with aggregator
        routing, so it dials an address from the Service's EndpointSlices,
        not the cluster IP. Two details make this work on loopback:

        - IPv4/IPv6 EndpointSlices (and Endpoints) reject loopback
          addresses, but an ``FQDN`` slice accepts "127.0.0.1" (every label
          is digits, a valid DNS label) and the apiserver dials it as a
          host name.
        - The apiserver matches the slice port by the Service port's *name*,
          so the slice must repeat it.

        The webhook's certificate must still be valid for
        ``<name>.<namespace>.svc``: that is the name the apiserver verifies.
        """
        documents = loopback_service(
            namespace, name, port=port, service_port=service_port, port_name=port_name
        )
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))

    def wait_for(
        self,
        condition: Callable[[], bool],
        *,
        what: str,
        timeout: float = 60.0,
        interval: float = 0.25,
    ) -> None:
        """Poll ``condition`` until true; raise :class:`ControlPlaneError` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    # -- lifecycle --

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        """Start all components and return once the apiserver is ready.

        "Ready" means ``/readyz`` answers 200 and the controller-manager has
        created the ``default`` ServiceAccount, i.e. both halves work.
        """
        if self._workdir is not None:
            return self
        self._workdir = Path(tempfile.mkdtemp(prefix="sidecar-injector-cp-", dir=self.temp_root))
        try:
            self._start_all()
        except BaseException as error:
            # Collect the logs before stop() deletes them.
            report = log_tails((c.name, c.log) for c in self._components)
            self.stop()
            if isinstance(error, ControlPlaneError):
                raise ControlPlaneError(f"{error}\n{report}") from error
            raise
        return self

    def stop(self) -> None:
        """Stop every component (whole process groups) and delete the workdir."""
        # Reverse start order: controllers first, etcd last, so nothing logs
        # a storm of connection errors while it is being stopped.
        for component in reversed(self._components):
            terminate(component.process)
        self._components.clear()
        self._port = 0
        self._ca = None
        self._admin = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # -- internals --

    def _start_all(self) -> None:
        if shutil.which(self.kubectl_binary) is None:
            # Readiness is checked with kubectl; say so instead of a bare
            # FileNotFoundError from the first probe.
            raise ControlPlaneError(f"{self.kubectl_binary!r} is not on PATH")
        work = self.workdir
        self._ca = write_control_plane_pki(work)
        etcd_url = self._start_etcd(work)
        self._port = free_port()
        self._write_kubeconfig(work)
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The reconciler would publish the advertise address as the
                # "kubernetes" Service's endpoint, and loopback endpoints are
                # invalid; nothing here runs in-cluster to use it anyway.
                "--endpoint-reconciler-type=none",
                f"--secure-port={self._port}",
                f"--cert-dir={work}",
                f"--tls-cert-file={work / 'apiserver.crt'}",
                f"--tls-private-key-file={work / 'apiserver.key'}",
                f"--client-ca-file={work / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={work / 'sa.pub'}",
                f"--service-account-signing-key-file={work / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # No kube-proxy: webhook (and aggregated API) calls must go
                # to an EndpointSlice address, never to a cluster IP.
                "--enable-aggregator-routing=true",
                # mesh-init needs NET_ADMIN; other tests may want privileged.
                "--allow-privileged=true",
                "--profiling=false",
                *self.extra_apiserver_args,
                *self._workdir_apiserver_args(work),
            ],
        )
        self._wait_ready()
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--service-account-private-key-file={work / 'sa.key'}",
                f"--root-ca-file={work / 'ca.crt'}",
                f"--cluster-signing-cert-file={work / 'ca.crt'}",
                f"--cluster-signing-key-file={work / 'ca.key'}",
                # One instance, so skip the lease dance (it delays the start
                # of every controller by a lease acquisition).
                "--leader-elect=false",
                # Its own HTTPS endpoint is of no use here and would need a
                # port and delegated authn/authz.
                "--secure-port=0",
                f"--cert-dir={work}",
                # Every default controller but the one that type-checks each
                # ValidatingAdmissionPolicy and writes the warnings into its
                # status: nothing here reads them, and each such write makes the
                # API server compile the policy again, a cost every policy a test
                # installs would pay twice over (docs/testing.md).
                "--controllers=*,-validatingadmissionpolicy-status-controller",
            ],
        )
        self.wait_for(
            self._default_service_account_exists,
            what="kube-controller-manager to create the default ServiceAccount",
            timeout=self.startup_timeout,
        )

    def _workdir_apiserver_args(self, work: Path) -> list[str]:
        """More apiserver flags, for subclasses whose flags name files in ``work``.

        Called after the certificates are written; later flags win, so these
        can also override the defaults above.
        """
        del work
        return []

    def write_user_kubeconfig(self, path: Path, user: str, *groups: str) -> Path:
        """Write a kubeconfig for ``user`` in ``groups``, with a client certificate from the CA.

        For components that must act as themselves, not as the admin: a
        kubelet (``system:node:<name>`` in ``system:nodes``, which the Node
        authorizer checks), ``system:kube-scheduler``, ``system:kube-proxy``.
        """
        if self._ca is None:
            raise ControlPlaneError("the control plane is not running")
        pair = issue(name(user, *groups), issuer=self._ca, usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
        return self._kubeconfig_file(path, user, pair.cert_pem(), pair.key_pem())

    def _write_kubeconfig(self, work: Path) -> None:
        self._kubeconfig_file(
            self.kubeconfig,
            ADMIN_USER,
            (work / "admin.crt").read_bytes(),
            (work / "admin.key").read_bytes(),
        )

    def _kubeconfig_file(self, path: Path, user: str, cert_pem: bytes, key_pem: bytes) -> Path:
        return kubeconfig_file(
            path,
            server=self.server,
            ca_file=self.ca_file,
            user=user,
            cert_pem=cert_pem,
            key_pem=key_pem,
        )

    def _start_etcd(self, work: Path) -> str:
        client_port, peer_port = free_port(), free_port()
        client_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                str(self.etcd),
                "--name=e2e",
                f"--data-dir={work / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=e2e={peer_url}",
                # Data lives for one test session; durability buys nothing
                # and fsync on a busy CI disk costs seconds per write burst.
                "--unsafe-no-fsync=true",
            ],
        )

        def healthy() -> bool:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"{client_url}/health", timeout=2) as response:  # noqa: S310 - fixed loopback URL
                    return b'"health":"true"' in response.read()
            except (OSError, urllib.error.URLError):
                return False

        self.wait_for(healthy, what="etcd /health", timeout=self.startup_timeout)
        return client_url

    def _wait_ready(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(self.workdir / "admin.crt", self.workdir / "admin.key")

        def ready() -> bool:
            self._check_alive()
            try:
                with urllib.request.urlopen(  # noqa: S310 - fixed loopback URL
                    f"{self.server}/readyz", timeout=5, context=context
                ) as response:
                    return bool(response.status == 200)
            except (OSError, urllib.error.URLError):
                return False

        self.wait_for(ready, what="kube-apiserver /readyz", timeout=self.startup_timeout)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.log_path(name)
        with log.open("wb") as sink:
            # A session of its own, so stop() can signal the whole group and
            # nothing the component forks outlives the fixture.
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        self._components.append(_Component(name, process, log))

    def _default_service_account_exists(self) -> bool:
        self._check_alive()
        probe = self.kubectl("-n", "default", "get", "serviceaccount", "default", check=False)
        return probe.returncode == 0

    def _check_alive(self) -> None:
        """Fail fast when a component died instead of waiting out the timeout."""
        for component in self._components:
            code = component.process.poll()
            if code is not None:
                raise ControlPlaneError(f"{component.name} exited with code {code} during startup")


def log_tails(logs: Iterable[tuple[str, Path]], lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` of each ``(component, log file)``, under a heading each."""
    parts = []
    for component, log in logs:
        try:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = ["<no log>"]
        body = "\n".join(f"    {line}" for line in tail)
        parts.append(f"--- last {lines} lines of {component} ---\n{body}")
    return "\n".join(parts)


def terminate(process: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds, reap it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    # The leader is gone; sweep anything it left in its group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
