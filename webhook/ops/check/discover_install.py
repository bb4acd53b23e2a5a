"""Discovery steps for the install itself: the API server, the webhook configuration,
its Service, the injector's Deployment and config, the endpoints, the served certificates.

Each step reads what it needs of the cluster, keeps a read error as text for
the check that reports it, and returns a typed fact for ``Context``. A step
never decides pass or fail: that is the checks' business.
"""

from __future__ import annotations

import base64
import binascii
import socket
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final
from urllib.parse import quote

from webhook.cluster.reader import Cluster, ClusterError
from webhook.manifests.config_file import ConfigError, parse_config
from webhook.ops.check.context import (
    ApiAnswer,
    BundleProblem,
    Bundles,
    Context,
    Dialled,
    Endpoint,
    Endpoints,
    Injector,
    ServiceObject,
    ServiceRef,
    WebhookConfiguration,
)
from webhook.ops.check.discover_policy import POLICY
from webhook.ops.check.model import Discovery
from webhook.pki import served_cert

CAINJECTOR_ANNOTATION: Final = "cert-manager.io/inject-ca-from"
MAX_ENDPOINTS: Final = 16
CONNECT_TIMEOUT: Final = 3.0


def find_api(cluster: Cluster, _context: Context) -> ApiAnswer:
    """``GET /version``."""
    try:
        version = cluster.get("/version") or {}
    except ClusterError as err:
        return ApiAnswer(error=str(err))
    return ApiAnswer(version=str(version.get("gitVersion", "unknown version")))


def find_webhook(cluster: Cluster, context: Context) -> WebhookConfiguration:
    """The MutatingWebhookConfiguration named by ``--webhook-configuration``."""
    path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/" + quote(
        context.options.configuration, safe=""
    )
    try:
        found = cluster.get(path)
    except ClusterError as err:
        return WebhookConfiguration(error=str(err))
    if found is None:
        return WebhookConfiguration()
    annotations = (found.get("metadata") or {}).get("annotations") or {}
    hooks = tuple(hook for hook in found.get("webhooks") or [] if isinstance(hook, dict))
    services: set[tuple[str, str, int]] = set()
    calls_url = None
    for hook in hooks:
        service = (hook.get("clientConfig") or {}).get("service")
        if not isinstance(service, dict):
            calls_url = str(hook.get("name"))
            break
        services.add(
            (str(service.get("namespace")), str(service.get("name")), service.get("port", 443))
        )
    one = None
    if calls_url is None and len(services) == 1:
        namespace, name, port = next(iter(services))
        one = ServiceRef(namespace, name, int(port))
    return WebhookConfiguration(
        exists=True,
        webhooks=hooks,
        cert_manager=str(annotations.get(CAINJECTOR_ANNOTATION) or ""),
        calls_url=calls_url,
        services=tuple(sorted(services)),
        service=one,
    )


def _service_path(service: ServiceRef) -> str:
    return f"/api/v1/namespaces/{quote(service.namespace, safe='')}/services/" + quote(
        service.name, safe=""
    )


def find_service(cluster: Cluster, context: Context) -> ServiceObject:
    """The Service the webhooks call."""
    if context.webhook.service is None:
        return ServiceObject()
    try:
        return ServiceObject(cluster.get(_service_path(context.webhook.service)))
    except ClusterError as err:
        return ServiceObject(error=str(err))


def find_injector(cluster: Cluster, context: Context) -> Injector:
    """The Deployment behind the Service, and the config it passes as ``--config``; in
    policy mode (no webhook), the config the policies record."""
    service = context.webhook.service
    if service is None:
        if context.policy.config is not None and not context.webhook.exists:
            return Injector(config=context.policy.config)
        return Injector()
    if context.service.error:
        return Injector(error=context.service.error)
    return injector_behind(cluster, service, context.service.obj)


def injector_behind(
    cluster: Cluster, service: ServiceRef, service_obj: Mapping[str, Any] | None
) -> Injector:
    """The Deployment behind ``service`` (as read: ``service_obj``), and its config."""
    try:
        deployment = _find_deployment(cluster, service, service_obj)
    except ClusterError as err:
        return Injector(error=str(err))
    if deployment is None:
        return Injector()
    where = config_volume(deployment)
    if where is None:
        return Injector(deployment=deployment)
    config_map, key = where
    found = Injector(deployment=deployment, config_map=config_map, config_key=key)
    try:
        obj = cluster.get(
            f"/api/v1/namespaces/{quote(service.namespace, safe='')}/configmaps/"
            + quote(config_map, safe="")
        )
    except ClusterError as err:
        return replace(found, config_map_error=str(err))
    text = ((obj or {}).get("data") or {}).get(key)
    if not isinstance(text, str):
        return found
    try:
        config = parse_config(text, origin=f"ConfigMap {service.namespace}/{config_map}")
    except ConfigError as err:
        return replace(found, config_text=text, config_error=str(err))
    return replace(found, config_text=text, config=config)


def _find_deployment(
    cluster: Cluster, service: ServiceRef, obj: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The Deployment behind the Service: its pod template matches the Service's selector.

    A Service without a selector (its endpoints managed by hand) is
    matched to the Deployment of the same name.
    """
    selector = ((obj or {}).get("spec") or {}).get("selector") or {}
    namespace = quote(service.namespace, safe="")
    for deployment in cluster.list(f"/apis/apps/v1/namespaces/{namespace}/deployments"):
        metadata = deployment.get("metadata") or {}
        template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
        labels = template.get("labels") or {}
        if selector:
            if all(labels.get(k) == v for k, v in selector.items()):
                return deployment
        elif metadata.get("name") == service.name:
            return deployment
    return None


def config_volume(deployment: Mapping[str, Any]) -> tuple[str, str] | None:
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


def find_endpoints(cluster: Cluster, context: Context) -> Endpoints:
    """The Service's port the webhooks call, and the endpoints behind it there."""
    service = context.webhook.service
    if service is None or context.service.obj is None:
        return Endpoints()
    port_name = None
    for port in (context.service.obj.get("spec") or {}).get("ports") or []:
        if port.get("port") == service.port:
            port_name = port.get("name") or ""
    if port_name is None:
        return Endpoints()
    try:
        slices = list(
            cluster.list(
                f"/apis/discovery.k8s.io/v1/namespaces/{quote(service.namespace, safe='')}"
                "/endpointslices",
                query={"labelSelector": f"kubernetes.io/service-name={service.name}"},
            )
        )
    except ClusterError as err:
        return Endpoints(port_name, error=str(err))
    ready, unready = endpoints_on(slices, port_name)
    return Endpoints(port_name, ready=tuple(ready), unready=tuple(unready))


def endpoints_on(
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


def find_bundles(_cluster: Cluster, context: Context) -> Bundles:
    """Each distinct caBundle and its certificates; the first unusable one, if any."""
    pems: dict[bytes, list[str]] = {}
    for hook in context.webhook.webhooks:
        raw = (hook.get("clientConfig") or {}).get("caBundle") or ""
        try:
            pem = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return Bundles(BundleProblem(str(hook.get("name")), "not-base64"))
        pems.setdefault(pem, []).append(str(hook.get("name")))
    labelled = tuple((pem, ", ".join(hooks)) for pem, hooks in pems.items())
    certificates = {}
    for pem, label in labelled:
        if not pem:
            return Bundles(BundleProblem(label, "empty"))
        try:
            certificates[label] = tuple(served_cert.bundle_certificates(pem))
        except served_cert.BundleError as err:
            return Bundles(BundleProblem(label, "no-certificate", str(err)))
    return Bundles(pems=labelled, certificates=certificates)


def targets(context: Context) -> tuple[Endpoint, ...]:
    """The endpoints to dial: the ready ones, or else the others.

    Without a ready endpoint, the not-ready ones may still say why (a replica
    whose certificate expired fails its readiness probe).
    """
    return context.endpoints.ready or context.endpoints.unready


def find_served(cluster: Cluster, context: Context) -> tuple[Dialled, ...]:
    """A TLS handshake with each endpoint (at most 16), judged by each caBundle."""
    service = context.webhook.service
    bundles = context.bundles
    if service is None or bundles.problem is not None or not bundles.pems:
        return ()
    opener = _Openers(cluster, context, service.namespace)
    dialled = []
    for endpoint in targets(context)[:MAX_ENDPOINTS]:
        open_socket, via = opener(endpoint)
        verdicts = tuple(
            (
                label,
                served_cert.probe(open_socket, server_name=service.server_name, bundle=pem),
            )
            for pem, label in bundles.pems
        )
        dialled.append(Dialled(endpoint, via, verdicts))
    return tuple(dialled)


class _Openers:
    """How to reach an endpoint: directly, or through a port-forward (see the package doc).

    In ``auto`` mode the first endpoint decides for all: a direct connection
    that cannot be opened within 3 s means pod addresses are not routable
    from here.
    """

    def __init__(self, cluster: Cluster, context: Context, namespace: str) -> None:
        self._cluster = cluster
        self._options = context.options
        self._namespace = namespace
        self._direct_works: bool | None = None

    def __call__(self, endpoint: Endpoint) -> tuple[served_cert.Opener, str]:
        def direct() -> Any:
            return socket.create_connection((endpoint.address, endpoint.port), CONNECT_TIMEOUT)

        def forwarded() -> Any:
            if endpoint.pod is None:
                raise OSError("the endpoint names no pod to port-forward to")
            return self._cluster.port_forward(self._namespace, endpoint.pod, endpoint.port)

        mode = self._options.connect
        if mode == "direct" or self._options.in_cluster:
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


# --- the steps, as the checks name them in ``needs`` ---------------------------------

API: Final = Discovery("api", "the API server's version", find_api)
WEBHOOK: Final = Discovery("webhook", "the webhook configuration", find_webhook)
SERVICE: Final = Discovery("service", "the webhook's Service", find_service, (WEBHOOK,))
INJECTOR: Final = Discovery(
    "injector",
    "the injector's Deployment and config",
    find_injector,
    (WEBHOOK, SERVICE, POLICY),
)
ENDPOINTS: Final = Discovery(
    "endpoints", "the Service's endpoints", find_endpoints, (WEBHOOK, SERVICE)
)
BUNDLES: Final = Discovery("bundles", "the webhooks' caBundles", find_bundles, (WEBHOOK,))
SERVED: Final = Discovery(
    "served",
    "the certificates the endpoints serve",
    find_served,
    (WEBHOOK, ENDPOINTS, BUNDLES),
)
