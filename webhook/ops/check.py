"""``sidecar-injector check``: is the install healthy, as the API server sees it?

In the spirit of ``linkerd check`` and ``istioctl x precheck``: one line per
check, ``pass``/``warn``/``fail`` (or ``skip`` when an earlier failure leaves
nothing to look at), a hint for each line that is not a pass, and a non-zero
exit when anything fails. The checks read what the API server really uses
rather than what the manifests say:

- ``kubernetes-api``: the API server answers;
- ``webhook-configuration``: the MutatingWebhookConfiguration exists and its
  webhooks call one Service;
- ``injector-config``: the config the injector's Deployment mounts (its
  excluded namespaces and proxy settings feed the checks below);
- ``service-endpoints``: the Service exists and has ready endpoints on the
  webhook's port;
- ``ca-bundle``: every webhook's ``caBundle`` verifies the certificate each
  ready endpoint actually serves, for ``<service>.<namespace>.svc``
  (``webhook.pki.served_cert``);
- ``certificate-expiry``: days until the served certificates (and the
  bundle's CAs) expire: a warning under 30, a failure once expired;
- ``replicas``: ready endpoints for ``failurePolicy: Fail``: a warning at 1,
  a failure at 0;
- ``excluded-namespaces``: the webhooks' namespace selectors, evaluated
  against the real Namespace objects, leave out kube-system, kube-public,
  kube-node-lease, the injector's own namespace and the config's exclusions;
- ``pod-security``: no opted-in namespace enforces PodSecurity ``baseline``
  or ``restricted`` (``mesh-init`` needs NET_ADMIN and NET_RAW);
- ``dry-run-injection``: a server-side dry-run Pod (``dryRun=All``, nothing
  is stored) in each opted-in namespace comes back injected;
- ``outdated-sidecars``: pods whose status annotation records another
  injector version or other containers than would be injected now
  (``webhook.ops.outdated``), grouped by workload with the command to restart it.

How the endpoints are reached: each ready endpoint address is dialled
directly (what the API server does); that works in the cluster and from a
node. From a workstation, where pod addresses are usually not routable, a
connection that cannot be opened within 3 s makes ``check`` fall back to a
port-forward through the API server (``pods/portforward``, as ``kubectl
port-forward``), which reaches the same container port and so the same
certificate. ``--connect`` forces either way.

Bounded: every request has a timeout (``--timeout``, 15 s) and a body limit
(4 MiB for an object, 8 MiB for a list page, asked again with fewer items
when over); lists of pods are read as metadata only, in pages, for at most
four request timeouts; at most 16 endpoints are dialled, ``--max-namespaces``
(10) namespaces get a dry-run Pod, 200 ReplicaSets or Jobs are looked up for
their owners, and 20,000 namespaces are read. What was cut short is said.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import quote

import orjson
from cryptography import x509

from webhook import __version__
from webhook.cluster import kube
from webhook.cluster.environment import running_in_cluster
from webhook.contract import constants
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine.config import InjectorConfig
from webhook.manifests.config_file import ConfigError, parse_config
from webhook.ops.outdated import (
    Expected,
    Report,
    StatusUnreadable,
    expected,
    owning_workload,
    recorded,
    staleness,
)
from webhook.pki import served_cert

Status = Literal["pass", "warn", "fail", "skip"]
Connect = Literal["auto", "direct", "port-forward"]
CONNECT_CHOICES: Final = ("auto", "direct", "port-forward")

OBJECT_LIMIT: Final = 4 * kube.MiB
PAGE_LIMIT: Final = 8 * kube.MiB
PAGE_SIZE: Final = 250
MAX_NAMESPACES: Final = 20_000
MAX_ENDPOINTS: Final = 16
MAX_OWNER_LOOKUPS: Final = 200
EXPECTED_CACHE: Final = 4096
CONNECT_TIMEOUT: Final = 3.0
EXPIRY_WARN_DAYS: Final = 30
DEFAULT_TIMEOUT: Final = 15.0
DEFAULT_MAX_NAMESPACES: Final = 10

ENFORCE_LABEL: Final = "pod-security.kubernetes.io/enforce"
CAINJECTOR_ANNOTATION: Final = "cert-manager.io/inject-ca-from"
ALWAYS_EXCLUDED: Final = ("kube-system", "kube-public", "kube-node-lease")
PROBE_POD_PREFIX: Final = "sidecar-injector-check-"
_METADATA_LIST: Final = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
_METADATA: Final = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


@dataclass(frozen=True)
class Result:
    """One check's verdict: a line for people, a hint when it is not a pass, details."""

    name: str
    status: Status
    message: str
    hint: str = ""
    details: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The result as ``-o json`` prints it."""
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "hint": self.hint,
            "details": list(self.details),
            "data": dict(self.data),
        }


@dataclass(frozen=True)
class Options:
    """What to check and how far to go."""

    namespace: str | None = None
    configuration: str = "sidecar-injector"
    connect: Connect = "auto"
    max_namespaces: int = DEFAULT_MAX_NAMESPACES
    timeout: float = DEFAULT_TIMEOUT
    in_cluster: bool = False

    @property
    def scan_seconds(self) -> float:
        """How long the pod scan for outdated sidecars may take in all."""
        return 4 * self.timeout


class ClusterError(Exception):
    """A request failed; one line. ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None, not_found: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.not_found = not_found


class Cluster:
    """The reads (and dry-run writes) ``check`` makes, each bounded in size and time."""

    def __init__(self, connection: kube.Connection, *, timeout: float) -> None:
        self.connection = connection
        self.host = connection.host
        self.timeout = timeout

    def _call(
        self, method: str, path: str, query: Mapping[str, str] | None = None, **kw: Any
    ) -> Any:
        try:
            return self.connection.call(method, path, query, timeout=self.timeout, **kw)
        except kube.APIStatus as err:
            raise ClusterError(str(err), status=err.status, not_found=err.not_found) from None
        except Exception as err:  # connection refused, timeouts, TLS, garbled bodies
            raise ClusterError(kube.one_line(err)) from None

    def get(self, path: str, *, metadata_only: bool = False) -> dict[str, Any] | None:
        """One object (at most 4 MiB), or ``None`` when the API server says NotFound."""
        try:
            found = self._call(
                "GET",
                path,
                limit=OBJECT_LIMIT,
                accept=_METADATA if metadata_only else "application/json",
                what="the object",
            )
        except ClusterError as err:
            if err.not_found:
                return None
            raise
        if not isinstance(found, dict):
            raise ClusterError(f"{path}: the answer is not an object")
        return found

    def list(
        self,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        metadata_only: bool = False,
        page_size: int = PAGE_SIZE,
        until: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The items of a list, page by page (each at most 8 MiB), until ``until`` (monotonic).

        Raises ``TimeUp`` when the deadline passes between two pages.
        """
        accept = _METADATA_LIST if metadata_only else "application/json"

        def fetch(page_query: dict[str, str]) -> Any:
            if until is not None and time.monotonic() > until:
                raise TimeUp
            try:
                return self.connection.call(
                    "GET",
                    path,
                    {**(query or {}), **page_query},
                    limit=PAGE_LIMIT,
                    timeout=self.timeout,
                    accept=accept,
                    what="a list page",
                )
            except kube.TooLarge:
                raise  # kube.paged asks again with fewer items
            except kube.APIStatus as err:
                raise ClusterError(str(err), status=err.status) from None
            except Exception as err:
                raise ClusterError(kube.one_line(err)) from None

        try:
            for _, items in kube.paged(fetch, page_size=page_size, what=f"the list {path}"):
                for item in items:
                    if isinstance(item, dict):
                        yield item
        except (kube.TooLarge, ValueError) as err:
            raise ClusterError(kube.one_line(err)) from None

    def dry_run_pod(self, namespace: str, pod: Mapping[str, Any]) -> dict[str, Any]:
        """Create ``pod`` with ``dryRun=All``: admitted (webhooks called), never stored."""
        created = self._call(
            "POST",
            f"/api/v1/namespaces/{quote(namespace, safe='')}/pods",
            {"dryRun": "All", "fieldManager": "sidecar-injector-check"},
            body=pod,
            limit=OBJECT_LIMIT,
            what="the dry-run pod",
        )
        if not isinstance(created, dict):
            raise ClusterError("the dry-run answer is not an object")
        return created

    def port_forward(self, namespace: str, pod: str, port: int) -> Any:
        """A connection to ``pod``'s ``port`` through the API server."""
        try:
            return self.connection.port_forward(namespace, pod, port, timeout=self.timeout)
        except Exception as err:  # the WebSocket client raises many types
            raise OSError(f"port-forward to pod {namespace}/{pod}: {kube.one_line(err)}") from None


class TimeUp(Exception):
    """A time budget ran out."""


# --- label selectors --------------------------------------------------------------


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a Kubernetes LabelSelector selects an object with ``labels``.

    As the API server evaluates it: a missing or empty selector selects
    everything; ``NotIn`` and ``DoesNotExist`` hold for a missing key; an
    unknown operator selects nothing (the API server would have refused it).
    """
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key = expression.get("key", "")
        values = expression.get("values") or []
        operator = expression.get("operator")
        present = key in labels
        if operator == "In":
            ok = present and labels[key] in values
        elif operator == "NotIn":
            ok = not present or labels[key] not in values
        elif operator == "Exists":
            ok = present
        elif operator == "DoesNotExist":
            ok = not present
        else:
            ok = False
        if not ok:
            return False
    return True


# --- what the checks share ----------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """An address (and port) behind the webhook's Service, and the pod it belongs to."""

    address: str
    port: int
    pod: str | None

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        where = f" (pod {self.pod})" if self.pod else ""
        return f"{host}:{self.port}{where}"


@dataclass
class _Facts:
    """What earlier checks found, for later ones."""

    configuration: dict[str, Any] | None = None
    service_name: str = ""
    service_namespace: str = ""
    service_port: int = 443
    cert_manager: str = ""
    ready: list[Endpoint] = field(default_factory=list)
    unready: list[Endpoint] = field(default_factory=list)
    deployment: dict[str, Any] | None = None
    config: InjectorConfig = field(default_factory=InjectorConfig)
    served: dict[Endpoint, list[tuple[str, served_cert.Served]]] = field(default_factory=dict)
    bundles: dict[str, list[x509.Certificate]] = field(default_factory=dict)
    namespaces: dict[str, NamespaceInfo] = field(default_factory=dict)
    namespaces_error: str = ""
    namespaces_partial: bool = False
    # From the dry-run: the running injector's version, and whether this
    # check's engine computes the same containers it injects.
    running_version: str = ""
    digests_confirmed: bool | None = None
    digest_note: str = ""

    @property
    def server_name(self) -> str:
        return f"{self.service_name}.{self.service_namespace}.svc"

    @property
    def webhooks(self) -> list[dict[str, Any]]:
        hooks = (self.configuration or {}).get("webhooks") or []
        return [hook for hook in hooks if isinstance(hook, dict)]


def _result(
    name: str,
    status: Status,
    message: str,
    hint: str = "",
    details: Sequence[str] = (),
    **data: Any,
) -> Result:
    return Result(name, status, message, hint, tuple(details), MappingProxyType(data))


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else (plural or word + 's')}"


class Checker:
    """Runs the checks in order; each may use what the earlier ones found."""

    def __init__(
        self,
        cluster: Cluster,
        options: Options,
        *,
        now: Callable[[], datetime.datetime] = served_cert.now,
    ) -> None:
        self.cluster = cluster
        self.options = options
        self.facts = _Facts()
        self._now = now
        self._direct_works: bool | None = None

    def run(self) -> list[Result]:
        """Every check, in order."""
        results = [self.kubernetes_api()]
        if results[0].status == "fail":
            reason = "the API server cannot be reached"
            return results + [
                _result(name, "skip", reason) for name in CHECK_NAMES if name != "kubernetes-api"
            ]
        steps: list[Callable[[], Result]] = [
            self.webhook_configuration,
            self.injector_config,
            self.service_endpoints,
            self.ca_bundle,
            self.certificate_expiry,
            self.replicas,
            self.excluded_namespaces,
            self.pod_security,
            self.dry_run_injection,
            self.outdated_sidecars,
        ]
        for step in steps:
            results.append(self._guarded(step))
        return results

    def _guarded(self, step: Callable[[], Result]) -> Result:
        """Run one check; an object shaped unlike any API server sends is a failure, not a crash."""
        try:
            return step()
        except Exception as err:  # e.g. a field of the wrong type in what the server sent
            name = step.__name__.replace("_", "-")
            return _result(
                name, "fail", f"could not be checked: {kube.one_line(err)}", "run check again"
            )

    # -- kubernetes-api ---------------------------------------------------------

    def kubernetes_api(self) -> Result:
        name = "kubernetes-api"
        try:
            version = self.cluster.get("/version") or {}
        except ClusterError as err:
            return _result(
                name,
                "fail",
                f"{self.cluster.host}: {err}",
                "check the kubeconfig (--kubeconfig, $KUBECONFIG) and that the API server is up",
            )
        git = version.get("gitVersion", "unknown version")
        return _result(name, "pass", f"{self.cluster.host} answers ({git})", version=git)

    # -- webhook-configuration --------------------------------------------------

    def webhook_configuration(self) -> Result:
        name = "webhook-configuration"
        wanted = self.options.configuration
        path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/" + quote(
            wanted, safe=""
        )
        try:
            found = self.cluster.get(path)
        except ClusterError as err:
            return _result(
                name, "fail", f"cannot read MutatingWebhookConfiguration {wanted}: {err}"
            )
        if found is None:
            return _result(
                name,
                "fail",
                f"MutatingWebhookConfiguration {wanted} does not exist",
                "install it: make deploy, or kubectl apply -k manifests/cert-manager "
                "(docs/operations.md)",
            )
        self.facts.configuration = found
        annotations = (found.get("metadata") or {}).get("annotations") or {}
        self.facts.cert_manager = str(annotations.get(CAINJECTOR_ANNOTATION) or "")
        hooks = self.facts.webhooks
        if not hooks:
            return _result(name, "fail", f"{wanted} has no webhooks", "re-apply the install")
        services = set()
        for hook in hooks:
            service = (hook.get("clientConfig") or {}).get("service")
            if not isinstance(service, dict):
                return _result(
                    name,
                    "fail",
                    f"webhook {hook.get('name')} calls a URL, not a Service",
                    "the install's webhooks call the Service mesh-system/sidecar-injector; "
                    "re-apply it",
                )
            services.add(
                (str(service.get("namespace")), str(service.get("name")), service.get("port", 443))
            )
        if len(services) != 1:
            listed = ", ".join(f"{ns}/{svc}:{port}" for ns, svc, port in sorted(services))
            return _result(
                name,
                "fail",
                f"the webhooks call different Services: {listed}",
                "re-apply the install",
            )
        namespace, service_name, port = services.pop()
        self.facts.service_namespace = namespace
        self.facts.service_name = service_name
        self.facts.service_port = int(port)
        policies = sorted({str(hook.get("failurePolicy", "Fail")) for hook in hooks})
        flavour = (
            f"caBundle from cert-manager ({self.facts.cert_manager})"
            if self.facts.cert_manager
            else "static caBundle"
        )
        return _result(
            name,
            "pass",
            f"{wanted}: {_plural(len(hooks), 'webhook')} call {namespace}/{service_name}:{port}"
            f" (failurePolicy {'/'.join(policies)}; {flavour})",
            webhooks=[hook.get("name") for hook in hooks],
            service=f"{namespace}/{service_name}",
            port=port,
        )

    # -- injector-config ------------------------------------------------------------

    def injector_config(self) -> Result:
        name = "injector-config"
        if not self.facts.service_name:
            return _result(name, "skip", "no webhook configuration to follow")
        namespace = self.facts.service_namespace
        defaults = "the checks below assume the built-in defaults"
        try:
            deployment = self._find_deployment()
        except ClusterError as err:
            return _result(
                name, "warn", f"cannot read the Deployments in {namespace}: {err}; {defaults}"
            )
        if deployment is None:
            return _result(
                name,
                "warn",
                f"no Deployment in {namespace} serves Service {self.facts.service_name};"
                f" {defaults}",
                "check reads the config from the ConfigMap the injector's Deployment mounts",
            )
        self.facts.deployment = deployment
        deployment_name = deployment["metadata"]["name"]
        where = _config_volume(deployment)
        if where is None:
            return _result(
                name,
                "pass",
                f"deployment/{deployment_name} passes no --config: the built-in defaults apply",
            )
        config_map, key = where
        try:
            found = self.cluster.get(
                f"/api/v1/namespaces/{quote(namespace, safe='')}/configmaps/"
                + quote(config_map, safe="")
            )
        except ClusterError as err:
            return _result(
                name, "warn", f"cannot read ConfigMap {namespace}/{config_map}: {err}; {defaults}"
            )
        text = ((found or {}).get("data") or {}).get(key)
        if not isinstance(text, str):
            return _result(
                name,
                "fail",
                f"deployment/{deployment_name} mounts {key} of ConfigMap {namespace}/{config_map},"
                " which does not exist",
                "re-apply the install: the injector cannot start without its config",
            )
        try:
            self.facts.config = parse_config(text, origin=f"ConfigMap {namespace}/{config_map}")
        except ConfigError as err:
            return _result(name, "fail", str(err), "fix the config and re-apply the install")
        return _result(
            name,
            "pass",
            f"ConfigMap {namespace}/{config_map} ({key}), mounted by deployment/{deployment_name}",
            configMap=config_map,
        )

    def _find_deployment(self) -> dict[str, Any] | None:
        """The Deployment behind the Service: its pod template matches the Service's selector.

        A Service without a selector (its endpoints managed by hand) is
        matched to the Deployment of the same name.
        """
        namespace = quote(self.facts.service_namespace, safe="")
        service = self.cluster.get(
            f"/api/v1/namespaces/{namespace}/services/{quote(self.facts.service_name, safe='')}"
        )
        selector = ((service or {}).get("spec") or {}).get("selector") or {}
        for deployment in self.cluster.list(f"/apis/apps/v1/namespaces/{namespace}/deployments"):
            metadata = deployment.get("metadata") or {}
            template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
            labels = template.get("labels") or {}
            if selector:
                if all(labels.get(k) == v for k, v in selector.items()):
                    return deployment
            elif metadata.get("name") == self.facts.service_name:
                return deployment
        return None

    # -- service-endpoints ------------------------------------------------------------

    def service_endpoints(self) -> Result:
        name = "service-endpoints"
        facts = self.facts
        if not facts.service_name:
            return _result(name, "skip", "no webhook configuration to follow")
        service_ref = f"{facts.service_namespace}/{facts.service_name}"
        namespace = quote(facts.service_namespace, safe="")
        try:
            service = self.cluster.get(
                f"/api/v1/namespaces/{namespace}/services/{quote(facts.service_name, safe='')}"
            )
        except ClusterError as err:
            return _result(name, "fail", f"cannot read Service {service_ref}: {err}")
        if service is None:
            return _result(
                name,
                "fail",
                f"Service {service_ref} does not exist: every call to the webhook fails",
                "re-apply the install",
            )
        port_name = None
        for port in (service.get("spec") or {}).get("ports") or []:
            if port.get("port") == facts.service_port:
                port_name = port.get("name") or ""
        if port_name is None:
            return _result(
                name,
                "fail",
                f"Service {service_ref} has no port {facts.service_port}, which the webhooks call",
                "re-apply the install",
            )
        try:
            slices = list(
                self.cluster.list(
                    f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                    query={"labelSelector": f"kubernetes.io/service-name={facts.service_name}"},
                )
            )
        except ClusterError as err:
            return _result(name, "fail", f"cannot read the EndpointSlices of {service_ref}: {err}")
        ready, unready = _endpoints(slices, port_name)
        facts.ready, facts.unready = ready, unready
        not_ready = len(unready)
        if not ready:
            return _result(
                name,
                "fail",
                f"Service {service_ref} has no ready endpoints"
                + (f" ({_plural(not_ready, 'endpoint')} not ready)" if not_ready else "")
                + ": pods that call the webhook are refused (failurePolicy Fail)",
                f"kubectl -n {facts.service_namespace} get pods,endpointslices; "
                f"kubectl -n {facts.service_namespace} describe deployment",
            )
        return _result(
            name,
            "pass",
            f"Service {service_ref} has {_plural(len(ready), 'ready endpoint')}"
            + (f" ({not_ready} not ready)" if not_ready else ""),
            details=[str(e) for e in ready],
            endpoints=[str(e) for e in ready],
        )

    # -- ca-bundle --------------------------------------------------------------------

    def ca_bundle(self) -> Result:
        name = "ca-bundle"
        facts = self.facts
        # Without a ready endpoint, the not-ready ones may still say why
        # (a replica whose certificate expired fails its readiness probe).
        targets = facts.ready or facts.unready
        if not targets:
            return _result(name, "skip", "no endpoint to dial")
        bundles = self._read_bundles()
        if isinstance(bundles, Result):
            return bundles
        problems: list[str] = []
        unreachable: list[str] = []
        details: list[str] = []
        if not facts.ready:
            details.append("no endpoint is ready: dialled the endpoints that are not")
        for endpoint in targets[:MAX_ENDPOINTS]:
            opener, via = self._opener(endpoint)
            verdicts = []
            for pem, hooks in bundles.items():
                label = ", ".join(hooks)
                served = served_cert.probe(opener, server_name=facts.server_name, bundle=pem)
                verdicts.append((label, served))
                if served.error and served.leaf is None:
                    unreachable.append(f"{endpoint} via {via}: {served.error}")
                elif not served.signed_by_bundle:
                    why = served_cert.explain(
                        served, server_name=facts.server_name, bundle=facts.bundles[label]
                    )
                    problems.append(f"{endpoint}: {why}")
                if served.leaf is not None:
                    details.append(
                        f"{endpoint} via {via}: {served_cert.common_name(served.leaf.subject)}"
                        f" issued by {served_cert.common_name(served.leaf.issuer)},"
                        f" sha256 {served_cert.fingerprint(served.leaf)[:16]}"
                    )
            facts.served[endpoint] = verdicts
        skipped = len(targets) - MAX_ENDPOINTS
        if skipped > 0:
            details.append(f"{skipped} more endpoints not dialled (at most {MAX_ENDPOINTS})")
        checked = len(facts.served)
        if problems:
            return _result(
                name,
                "fail",
                f"caBundle does not verify what {len(problems)} of {checked} endpoints serve"
                f" for {facts.server_name}: {problems[0]}",
                self._bundle_hint(),
                details=sorted(set(details + problems[1:])),
            )
        if unreachable:
            reached = checked - len(unreachable)
            return _result(
                name,
                "warn" if reached else "fail",
                f"cannot complete a TLS handshake with {len(unreachable)} of {checked} endpoints:"
                f" {unreachable[0]}",
                "from outside the cluster check falls back to a port-forward through the API"
                " server (needs create on pods/portforward); run check in the cluster"
                " or with --connect port-forward",
                details=sorted(set(details + unreachable[1:])),
            )
        return _result(
            name,
            "pass",
            f"caBundle verifies the certificate {'both' if checked == 2 else 'all'}"
            f" {_plural(checked, 'endpoint')} serve for {facts.server_name}"
            if checked > 1
            else f"caBundle verifies the certificate the endpoint serves for {facts.server_name}",
            details=sorted(set(details)),
        )

    def _read_bundles(self) -> dict[bytes, list[str]] | Result:
        """Each distinct caBundle (PEM) and the webhooks using it; a failed Result if unusable."""
        name = "ca-bundle"
        bundles: dict[bytes, list[str]] = {}
        for hook in self.facts.webhooks:
            raw = (hook.get("clientConfig") or {}).get("caBundle") or ""
            try:
                pem = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                return _result(
                    name,
                    "fail",
                    f"webhook {hook.get('name')}: caBundle is not base64",
                    self._bundle_hint(),
                )
            bundles.setdefault(pem, []).append(str(hook.get("name")))
        for pem, hooks in bundles.items():
            label = ", ".join(hooks)
            if not pem:
                return _result(
                    name,
                    "fail",
                    f"webhook {label}: caBundle is empty, so the API server trusts only the"
                    " system roots and refuses the injector's certificate",
                    self._bundle_hint(),
                )
            try:
                self.facts.bundles[label] = served_cert.bundle_certificates(pem)
            except served_cert.BundleError as err:
                return _result(name, "fail", f"webhook {label}: {err}", self._bundle_hint())
        return bundles

    def _bundle_hint(self) -> str:
        if self.facts.cert_manager:
            return (
                f"cert-manager's cainjector fills caBundle from {self.facts.cert_manager}:"
                " check the Certificate is Ready (kubectl -n"
                f" {self.facts.service_namespace} get certificate) and the cainjector runs"
                " (docs/operations.md)"
            )
        return (
            "render and apply the install from the certificates the injector serves:"
            " make manifests && make deploy (docs/operations.md)"
        )

    def _opener(self, endpoint: Endpoint) -> tuple[served_cert.Opener, str]:
        """How to reach ``endpoint``: directly, or through a port-forward (see the module doc)."""

        def direct() -> Any:
            return socket.create_connection((endpoint.address, endpoint.port), CONNECT_TIMEOUT)

        def forwarded() -> Any:
            if endpoint.pod is None:
                raise OSError("the endpoint names no pod to port-forward to")
            return self.cluster.port_forward(
                self.facts.service_namespace, endpoint.pod, endpoint.port
            )

        mode = self.options.connect
        if mode == "direct" or self.options.in_cluster:
            return direct, "direct"
        if mode == "port-forward":
            return forwarded, "port-forward"
        if self._direct_works is None:
            try:
                direct().close()
                self._direct_works = True
            except OSError:
                self._direct_works = False
        if self._direct_works or endpoint.pod is None:
            return direct, "direct"
        return forwarded, "port-forward"

    # -- certificate-expiry -------------------------------------------------------------

    def certificate_expiry(self) -> Result:
        name = "certificate-expiry"
        now = self._now()
        leaves = self._served_leaves()
        if not leaves:
            return _result(name, "skip", "no served certificate to look at")
        details = []
        worst: tuple[float, str] | None = None
        for fp, (leaf, where) in sorted(leaves.items(), key=lambda i: i[1][0].not_valid_after_utc):
            days = served_cert.days_left(leaf, now)
            line = (
                f"sha256 {fp[:16]} served by {', '.join(where)}: expires"
                f" {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC ({days:.0f} days)"
            )
            details.append(line)
            if worst is None or days < worst[0]:
                worst = (days, f"the certificate served by {where[0]}")
        for label, certs in self.facts.bundles.items():
            for cert in certs:
                days = served_cert.days_left(cert, now)
                details.append(
                    f"caBundle CA {served_cert.common_name(cert.subject)} ({label}): expires"
                    f" {cert.not_valid_after_utc:%Y-%m-%d} ({days:.0f} days)"
                )
                if worst is None or days < worst[0]:
                    worst = (days, f"the CA {served_cert.common_name(cert.subject)} in caBundle")
        if worst is None:  # pragma: no cover - leaves is not empty
            return _result(name, "skip", "no certificate to look at")
        days, what = worst
        renew = self._renew_hint(ca="CA" in what)
        if days <= 0:
            return _result(
                name,
                "fail",
                f"{what} expired {-days:.0f} days ago: the API server refuses every call",
                renew,
                details,
                days=round(days, 1),
            )
        if days < EXPIRY_WARN_DAYS:
            return _result(
                name,
                "warn",
                f"{what} expires in {days:.0f} days (under {EXPIRY_WARN_DAYS})",
                renew,
                details,
                days=round(days, 1),
            )
        return _result(
            name,
            "pass",
            f"the first to expire, {what}, has {days:.0f} days left",
            details=details,
            days=round(days, 1),
        )

    def _served_leaves(self) -> dict[str, tuple[x509.Certificate, list[str]]]:
        """Each distinct served certificate by fingerprint, with the endpoints serving it."""
        leaves: dict[str, tuple[x509.Certificate, list[str]]] = {}
        for endpoint, verdicts in self.facts.served.items():
            for _, served in verdicts:
                if served.leaf is not None:
                    fp = served_cert.fingerprint(served.leaf)
                    entry = leaves.setdefault(fp, (served.leaf, []))
                    if str(endpoint) not in entry[1]:
                        entry[1].append(str(endpoint))
        return leaves

    def _renew_hint(self, *, ca: bool) -> str:
        if ca:
            return "rotate the CA in the order docs/operations.md gives (trust both, then switch)"
        if self.facts.cert_manager:
            return (
                "cert-manager renews before expiry; to force it: cmctl renew -n"
                f" {self.facts.service_namespace} <certificate> (docs/operations.md)"
            )
        return (
            "sidecar-injector certs --renew --out certs, then update the Secret:"
            " make manifests && make deploy (docs/operations.md)"
        )

    # -- replicas ------------------------------------------------------------------------

    def replicas(self) -> Result:
        name = "replicas"
        facts = self.facts
        if not facts.service_name:
            return _result(name, "skip", "no webhook configuration to follow")
        policies = {str(h.get("failurePolicy", "Fail")) for h in facts.webhooks}
        policy = "failurePolicy Fail" if "Fail" in policies else "failurePolicy Ignore"
        count = len(facts.ready)
        desired = ""
        deployment = facts.deployment
        namespace = facts.service_namespace
        scale = "kubectl -n {ns} scale deployment/{name} --replicas=2"
        deploy_name = "sidecar-injector"
        if deployment is not None:
            deploy_name = deployment["metadata"]["name"]
            wanted = (deployment.get("spec") or {}).get("replicas", 1)
            desired = f" (deployment/{deploy_name} wants {wanted})"
        message = f"{_plural(count, 'ready replica')} behind the Service{desired}"
        if count == 0:
            return _result(
                name,
                "fail",
                f"{message}: with {policy}, meshed pods cannot be created",
                f"kubectl -n {namespace} get pods; kubectl -n {namespace} describe"
                f" deployment/{deploy_name}",
                ready=count,
            )
        if count == 1:
            wanted_more = (
                deployment is not None and (deployment.get("spec") or {}).get("replicas", 1) > 1
            )
            return _result(
                name,
                "warn",
                f"{message}: with {policy}, one restart or node drain blocks meshed pods",
                f"why are the others not ready? kubectl -n {namespace} get pods;"
                f" kubectl -n {namespace} describe deployment/{deploy_name}"
                if wanted_more
                else scale.format(ns=namespace, name=deploy_name)
                + " (and keep the PodDisruptionBudget)",
                ready=count,
            )
        return _result(name, "pass", message, ready=count)

    # -- namespaces -----------------------------------------------------------------------

    def _load_namespaces(self) -> None:
        """The Namespace objects the checks below need (once)."""
        facts = self.facts
        if facts.namespaces or facts.namespaces_error:
            return
        wanted = self.options.namespace
        try:
            if wanted is not None:
                for name in {wanted, *self._excluded()}:
                    found = self.cluster.get(f"/api/v1/namespaces/{quote(name, safe='')}")
                    if found is not None:
                        info = _namespace_info(found)
                        if info is not None:
                            facts.namespaces[info.name] = info
                return
            for obj in self.cluster.list("/api/v1/namespaces", page_size=500):
                info = _namespace_info(obj)
                if info is not None:
                    facts.namespaces[info.name] = info
                if len(facts.namespaces) >= MAX_NAMESPACES:
                    facts.namespaces_partial = True
                    break
        except ClusterError as err:
            facts.namespaces_error = f"cannot read the namespaces: {err}"

    def _excluded(self) -> list[str]:
        names = [*ALWAYS_EXCLUDED]
        if self.facts.service_namespace:
            names.append(self.facts.service_namespace)
        names += self.facts.config.excluded_namespaces
        return list(dict.fromkeys(names))

    def _opted_in(self) -> list[NamespaceInfo]:
        excluded = set(self._excluded())
        return sorted(
            (
                info
                for info in self.facts.namespaces.values()
                if info.labels.get(constants.NAMESPACE_INJECTION_LABEL) == constants.ENABLED
                and info.name not in excluded
                and (self.options.namespace is None or info.name == self.options.namespace)
            ),
            key=lambda info: info.name,
        )

    # -- excluded-namespaces ------------------------------------------------------------

    def excluded_namespaces(self) -> Result:
        name = "excluded-namespaces"
        if not self.facts.webhooks:
            return _result(name, "skip", "no webhook configuration to evaluate")
        self._load_namespaces()
        if self.facts.namespaces_error:
            return _result(name, "warn", self.facts.namespaces_error)
        leaks: list[str] = []
        details: list[str] = []
        for namespace in self._excluded():
            info = self.facts.namespaces.get(namespace)
            if info is None:
                # What the API server would label it with on creation.
                labels: Mapping[str, str] = {"kubernetes.io/metadata.name": namespace}
                details.append(f"{namespace} does not exist; judged by its name label")
            else:
                labels = info.labels
            for hook in self.facts.webhooks:
                if selector_matches(hook.get("namespaceSelector"), labels):
                    note = (
                        " (its matchConditions were not evaluated)"
                        if hook.get("matchConditions")
                        else ""
                    )
                    leaks.append(f"webhook {hook.get('name')} selects {namespace}{note}")
        excluded = ", ".join(self._excluded())
        if leaks:
            return _result(
                name,
                "fail",
                f"{leaks[0]}: its pods call the injector, and with failurePolicy Fail an outage"
                " blocks them" + (f" (+{len(leaks) - 1} more)" if len(leaks) > 1 else ""),
                "every webhook's namespaceSelector needs kubernetes.io/metadata.name NotIn"
                f" [{excluded}] (manifests/base/mutatingwebhook.yaml)",
                details + leaks[1:],
            )
        return _result(
            name,
            "pass",
            f"no webhook selects {excluded}",
            details=details,
        )

    # -- pod-security -------------------------------------------------------------------

    def pod_security(self) -> Result:
        name = "pod-security"
        self._load_namespaces()
        if self.facts.namespaces_error:
            return _result(name, "warn", self.facts.namespaces_error)
        opted = self._opted_in()
        conflicts = [
            f"{info.name} enforces {info.labels[ENFORCE_LABEL]}"
            for info in opted
            if info.labels.get(ENFORCE_LABEL) in ("baseline", "restricted")
        ]
        if conflicts:
            return _result(
                name,
                "fail",
                f"{_plural(len(conflicts), 'opted-in namespace')} enforce PodSecurity"
                f" baseline/restricted, which refuses mesh-init (NET_ADMIN, NET_RAW):"
                f" {', '.join(conflicts[:5])}" + (" ..." if len(conflicts) > 5 else ""),
                f"label it {ENFORCE_LABEL}=privileged, or opt it out"
                f" ({constants.NAMESPACE_INJECTION_LABEL}=disabled)",
                conflicts + self._partial(),
                namespaces=[c.split(" ", 1)[0] for c in conflicts],
            )
        return _result(
            name,
            "pass",
            f"none of {_plural(len(opted), 'opted-in namespace')} enforces PodSecurity"
            " baseline or restricted",
            details=self._partial(),
        )

    def _partial(self) -> list[str]:
        if not self.facts.namespaces_partial:
            return []
        return [f"only the first {MAX_NAMESPACES} namespaces were read (--namespace NS for others)"]

    # -- dry-run-injection ----------------------------------------------------------------

    def dry_run_injection(self) -> Result:
        name = "dry-run-injection"
        self._load_namespaces()
        if self.facts.namespaces_error:
            return _result(name, "warn", self.facts.namespaces_error)
        opted = self._opted_in()
        wanted = self.options.namespace
        opt_in_label = False
        if wanted is not None and not opted:
            return _result(
                name,
                "skip",
                f"namespace {wanted} is not opted in ({constants.NAMESPACE_INJECTION_LABEL}"
                f"={constants.ENABLED}) or does not exist",
            )
        if not opted:
            # Nothing opted in yet: a pod that opts itself in still proves the path.
            default = self.facts.namespaces.get("default")
            if default is None:
                return _result(name, "skip", "no namespace is opted in, and there is no default")
            opted = [default]
            opt_in_label = True
        probed = opted[: max(1, self.options.max_namespaces)]
        failures: list[str] = []
        details: list[str] = []
        for info in probed:
            outcome = self._dry_run(info, opt_in_label=opt_in_label)
            if outcome:
                failures.append(f"{info.name}: {outcome}")
            else:
                details.append(f"{info.name}: injected")
        rest = len(opted) - len(probed)
        scope = (
            "no namespace is opted in; a pod labelled sidecar.mesh.io/inject=true in default"
            if opt_in_label
            else f"{len(probed)} of {_plural(len(opted), 'opted-in namespace')}"
        )
        if rest > 0:
            details.append(f"{rest} more not tried (--max-namespaces, or --namespace NS)")
        details += self._partial()
        if failures:
            return _result(
                name,
                "fail",
                f"a dry-run pod is not injected in {len(failures)} of {len(probed)} namespaces:"
                f" {failures[0]}",
                "see the other checks; kubectl create --dry-run=server -o yaml shows what the"
                " API server makes of a pod",
                details + failures[1:],
            )
        return _result(name, "pass", f"dry-run pods come back injected ({scope})", details=details)

    def _dry_run(self, info: NamespaceInfo, *, opt_in_label: bool) -> str:
        """Empty when the dry-run pod came back injected, else what happened."""
        labels = {"app.kubernetes.io/name": "sidecar-injector-check"}
        if opt_in_label:
            labels[constants.INJECT_KEY] = "true"
        try:
            pod = self.cluster.dry_run_pod(info.name, probe_pod(labels))
        except ClusterError as err:
            return f"refused: {err}"
        metadata = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        names = {
            c.get("name")
            for key in ("containers", "initContainers")
            for c in spec.get(key) or []
            if isinstance(c, dict)
        }
        if constants.PROXY_CONTAINER not in names:
            return "admitted without mesh-proxy (the webhook was not called, or skipped it)"
        try:
            status = recorded(metadata.get("annotations") or {})
        except StatusUnreadable as err:
            return f"the status annotation {err}"
        if status is None:
            return "injected, but without the status annotation"
        self._learn_reference(info, status.version, status.digest)
        return ""

    def _learn_reference(self, info: NamespaceInfo, version: str, digest: str | None) -> None:
        """Compare what the running injector wrote with what this check's engine computes."""
        facts = self.facts
        if facts.digests_confirmed is not None:
            return
        facts.running_version = version
        mine = expected(info, {}, facts.config)
        if version != __version__:
            facts.digests_confirmed = False
            facts.digest_note = (
                f"container digests not compared: the injector is {version}, this check"
                f" {__version__}"
            )
        elif mine.digest != digest:
            facts.digests_confirmed = False
            facts.digest_note = (
                f"container digests not compared: for namespace {info.name} the injector"
                " injects other containers than this check computes (another config or build)"
            )
        else:
            facts.digests_confirmed = True

    # -- outdated-sidecars ------------------------------------------------------------------

    def outdated_sidecars(self) -> Result:
        name = "outdated-sidecars"
        facts = self.facts
        self._load_namespaces()
        version = facts.running_version or __version__
        digests = facts.digests_confirmed is not False
        notes = []
        if facts.digest_note:
            notes.append(facts.digest_note)
        elif facts.digests_confirmed is None:
            notes.append(
                f"the running injector's version is assumed to be {__version__} (no dry-run"
                " pod came back injected)"
            )
        wanted = self.options.namespace
        path = f"/api/v1/namespaces/{quote(wanted, safe='')}/pods" if wanted else "/api/v1/pods"
        report = Report()
        cache: dict[tuple[str, tuple[tuple[str, str], ...]], Expected] = {}
        lookups = _OwnerLookups(self.cluster)
        until = time.monotonic() + self.options.scan_seconds
        try:
            for pod in self.cluster.list(path, metadata_only=True, until=until):
                report.scanned += 1
                self._judge(pod, report, cache, lookups, version=version, digests=digests)
        except TimeUp:
            report.complete = False
            report.stopped_because = f"stopped after {self.options.scan_seconds:g}s"
        except ClusterError as err:
            if report.scanned == 0:
                return _result(name, "warn", f"cannot list pods: {err}", details=notes)
            report.complete = False
            report.stopped_because = f"stopped: {err}"
        return _outdated_result(name, report, notes)

    def _judge(
        self,
        pod: dict[str, Any],
        report: Report,
        cache: dict[tuple[str, tuple[tuple[str, str], ...]], Expected],
        lookups: _OwnerLookups,
        *,
        version: str,
        digests: bool,
    ) -> None:
        metadata = pod.get("metadata") or {}
        annotations = metadata.get("annotations") or {}
        if not isinstance(annotations, dict):
            return
        try:
            found = recorded(annotations)
        except StatusUnreadable:
            report.unreadable += 1
            return
        if found is None:
            return
        report.injected += 1
        namespace = str(metadata.get("namespace") or "")
        settings = tuple(
            sorted(
                (k, v)
                for k, v in annotations.items()
                if k.startswith(constants.PREFIX)
                and isinstance(v, str)
                and k != constants.STATUS_ANNOTATION
            )
        )
        key = (namespace, settings)
        now = cache.get(key)
        if now is None:
            info = self.facts.namespaces.get(namespace) or NamespaceInfo(namespace)
            now = expected(info, dict(settings), self.facts.config)
            if len(cache) < EXPECTED_CACHE:
                cache[key] = now
        if now.skip:
            report.not_injected_now += 1
        why = staleness(found, now, version=version, digests=digests)
        if why is not None:
            report.add(owning_workload(pod, lookups), str(metadata.get("name")), why)


CHECK_NAMES: Final = (
    "kubernetes-api",
    "webhook-configuration",
    "injector-config",
    "service-endpoints",
    "ca-bundle",
    "certificate-expiry",
    "replicas",
    "excluded-namespaces",
    "pod-security",
    "dry-run-injection",
    "outdated-sidecars",
)


def _outdated_result(name: str, report: Report, notes: list[str]) -> Result:
    details = list(notes)
    if report.unreadable:
        details.append(f"{_plural(report.unreadable, 'pod')} with an unreadable status annotation")
    if report.not_injected_now:
        details.append(
            f"{_plural(report.not_injected_now, 'injected pod')} would not be injected now"
            " (namespace opted out, or settings refused)"
        )
    scope = f"{_plural(report.injected, 'injected pod')} of {report.scanned} scanned"
    if not report.complete:
        details.append(f"scan incomplete: {report.stopped_because}")
    workloads = []
    for workload, entry in sorted(report.outdated.items()):
        reason = entry.reasons.most_common(1)[0][0]
        details.append(
            f"{workload.namespace}: {workload.kind.lower()}/{workload.name}"
            f" ({_plural(entry.pods, 'pod')}, {reason}): {workload.restart()}"
        )
        workloads.append(
            {
                "namespace": workload.namespace,
                "kind": workload.kind,
                "name": workload.name,
                "pods": entry.pods,
                "examples": list(entry.sample),
                "reasons": dict(entry.reasons),
                "restart": workload.restart(),
            }
        )
    counts = report.per_namespace()
    data = {
        "scanned": report.scanned,
        "injected": report.injected,
        "outdated": report.outdated_pods,
        "namespaces": dict(sorted(counts.items())),
        "workloads": workloads,
        "complete": report.complete,
    }
    if report.outdated:
        per_ns = ", ".join(f"{ns}: {n}" for ns, n in sorted(counts.items()))
        return _result(
            name,
            "warn",
            f"{_plural(report.outdated_pods, 'pod')} run an outdated sidecar ({per_ns}); {scope}",
            "restart the workloads listed below to inject the current sidecar",
            details,
            **data,
        )
    status: Status = "pass" if report.complete else "warn"
    hint = "" if report.complete else "narrow it down with --namespace NS"
    return _result(name, status, f"no outdated sidecar ({scope})", hint, details, **data)


class _OwnerLookups:
    """ReplicaSet -> Deployment and Job -> CronJob, read as metadata, cached and capped."""

    _PATHS: Final = {"ReplicaSet": "/apis/apps/v1", "Job": "/apis/batch/v1"}

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._found: dict[tuple[str, str, str], tuple[str, str] | None] = {}

    def __call__(self, namespace: str, kind: str, name: str) -> tuple[str, str] | None:
        key = (namespace, kind, name)
        if key in self._found:
            return self._found[key]
        owner = None
        if len(self._found) < MAX_OWNER_LOOKUPS:
            resource = f"{kind.lower()}s"
            path = (
                f"{self._PATHS[kind]}/namespaces/{quote(namespace, safe='')}/{resource}/"
                f"{quote(name, safe='')}"
            )
            try:
                obj = self._cluster.get(path, metadata_only=True)
            except ClusterError:
                obj = None
            refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
            for ref in refs:
                if isinstance(ref, dict) and ref.get("controller"):
                    owner = (str(ref.get("kind")), str(ref.get("name")))
        self._found[key] = owner
        return owner


def probe_pod(labels: Mapping[str, str]) -> dict[str, Any]:
    """The dry-run Pod: it passes PodSecurity ``restricted`` on its own, so a refusal is ours.

    Small requests and limits keep a namespace's ResourceQuota from refusing it first.
    """
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": PROBE_POD_PREFIX, "labels": dict(labels)},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "16Mi"},
                        "limits": {"cpu": "10m", "memory": "16Mi"},
                    },
                }
            ],
        },
    }


def _endpoints(
    slices: list[dict[str, Any]], port_name: str
) -> tuple[list[Endpoint], list[Endpoint]]:
    """Distinct (address, port) endpoints on the named port: (ready, not ready).

    A ``ready`` condition that is absent counts as ready, as the API says.
    """
    found: dict[tuple[str, int], tuple[Endpoint, bool]] = {}
    for endpoint_slice in slices:
        port = next(
            (
                p.get("port")
                for p in endpoint_slice.get("ports") or []
                if isinstance(p, dict) and (p.get("name") or "") == port_name
            ),
            None,
        )
        if not isinstance(port, int):
            continue
        for endpoint in endpoint_slice.get("endpoints") or []:
            addresses = endpoint.get("addresses") or []
            if not isinstance(endpoint, dict) or not addresses:
                continue
            ready = (endpoint.get("conditions") or {}).get("ready") is not False
            target = endpoint.get("targetRef") or {}
            pod = target.get("name") if target.get("kind") == "Pod" else None
            key = (str(addresses[0]), port)
            if key not in found or ready:
                found[key] = (Endpoint(key[0], port, pod), ready)
    ordered = sorted(found.values(), key=lambda item: (item[0].address, item[0].port))
    return [e for e, ready in ordered if ready], [e for e, ready in ordered if not ready]


def _config_volume(deployment: Mapping[str, Any]) -> tuple[str, str] | None:
    """(ConfigMap name, key) of the file the Deployment passes as ``--config``, if any."""
    spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    volumes = {v.get("name"): v for v in spec.get("volumes") or [] if isinstance(v, dict)}
    for container in spec.get("containers") or []:
        args = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
        path = None
        for index, arg in enumerate(args):
            if arg.startswith("--config="):
                path = arg.split("=", 1)[1]
            elif arg == "--config" and index + 1 < len(args):
                path = args[index + 1]
        if path is None:
            continue
        for mount in container.get("volumeMounts") or []:
            mount_path = str(mount.get("mountPath", "")).rstrip("/")
            if not path.startswith(mount_path + "/"):
                continue
            volume = volumes.get(mount.get("name")) or {}
            config_map = volume.get("configMap")
            if not isinstance(config_map, dict) or not config_map.get("name"):
                continue
            key = path[len(mount_path) + 1 :]
            for item in config_map.get("items") or []:
                if item.get("path") == key:
                    key = str(item.get("key"))
            return str(config_map["name"]), key
    return None


def _namespace_info(obj: Mapping[str, Any]) -> NamespaceInfo | None:
    """Labels and the ``sidecar.mesh.io/`` annotations of a Namespace (what checks need)."""
    try:
        info = NamespaceInfo.from_object(obj)
    except (ValueError, AttributeError):
        return None
    kept = {k: v for k, v in info.annotations.items() if k.startswith(constants.PREFIX)}
    return NamespaceInfo(info.name, info.labels, MappingProxyType(kept))


# --- output -----------------------------------------------------------------------------


def render_text(results: Sequence[Result], *, host: str) -> str:
    """One line per check, hints and details indented under it, a summary at the end."""
    width = max(len(r.name) for r in results)
    lines = [f"sidecar-injector check of {host}", ""]
    for result in results:
        lines.append(f"{result.status.upper():<4}  {result.name:<{width}}  {result.message}")
        if result.hint:
            lines.append(f"{'':<4}  {'':<{width}}  hint: {result.hint}")
        lines.extend(f"{'':<4}  {'':<{width}}  - {detail}" for detail in result.details)
    counts = summary(results)
    lines += [
        "",
        f"{counts['pass']} passed, {_plural(counts['warn'], 'warning')},"
        f" {counts['fail']} failed, {counts['skip']} skipped",
    ]
    return "\n".join(lines) + "\n"


def render_json(results: Sequence[Result], *, host: str) -> str:
    """The results for scripts: ``{"ok", "host", "summary", "checks": [...]}``."""
    counts = summary(results)
    document = {
        "ok": counts["fail"] == 0,
        "host": host,
        "summary": counts,
        "checks": [r.as_json() for r in results],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"


def summary(results: Sequence[Result]) -> dict[str, int]:
    """How many checks ended in each status."""
    counts = {"pass": 0, "warn": 0, "fail": 0, "skip": 0}
    for result in results:
        counts[result.status] += 1
    return counts


def check_cluster(
    *,
    kubeconfig: Any = None,
    options: Options,
    now: Callable[[], datetime.datetime] = served_cert.now,
) -> tuple[list[Result], str]:
    """Configure the client like kubectl would and run every check; (results, API host)."""
    try:
        configuration = kube.load_configuration(kubeconfig)
    except kube.ConfigurationError as err:
        hint = (
            "pass --kubeconfig FILE (or set KUBECONFIG)"
            if kubeconfig is None
            else "check the file: kubectl --kubeconfig FILE cluster-info reads it the same way"
        )
        results = [_result("kubernetes-api", "fail", str(err), hint)]
        results += [_result(n, "skip", "no API server") for n in CHECK_NAMES[1:]]
        return results, "(not configured)"
    in_cluster = kubeconfig is None and running_in_cluster()
    connection = kube.Connection(configuration, connect_timeout=min(5.0, options.timeout))
    cluster = Cluster(connection, timeout=options.timeout)
    checker = Checker(
        cluster,
        Options(
            namespace=options.namespace,
            configuration=options.configuration,
            connect=options.connect,
            max_namespaces=options.max_namespaces,
            timeout=options.timeout,
            in_cluster=in_cluster or options.in_cluster,
        ),
        now=now,
    )
    try:
        return checker.run(), connection.host
    finally:
        connection.clear()
