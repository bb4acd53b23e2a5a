"""``check``'s discovery steps alone, against fake API servers.

Each step reads one thing of the cluster and turns it into a typed fact of the
context: tested against a small fake API server of plain objects (the shared
``FakeKubeAPI`` for namespaces, a real TLS server for the endpoints).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.fake_kube_api import FakeKubeAPI
from webhook import __version__
from webhook.cluster import kube
from webhook.cluster.reader import Cluster
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine import inject
from webhook.engine.config import InjectorConfig
from webhook.manifests.patched import patched
from webhook.ops.check import Options
from webhook.ops.check import context as c
from webhook.ops.check import discover_install as di
from webhook.ops.check import discover_pods as dp
from webhook.ops.check import discover_templates as dt
from webhook.ops.outdated import Workload
from webhook.pki import certs

SERVICE = c.ServiceRef("mesh-system", "sidecar-injector", 443)
NAME = SERVICE.server_name
CA = certs.make_ca()
LEAF = certs.make_serving_cert(CA, dns_names=[NAME])
CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
MESH = "/api/v1/namespaces/mesh-system"
APPS = "/apis/apps/v1/namespaces/mesh-system"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/mesh-system/endpointslices"
RESOURCES = {"namespaces", "pods", "deployments", "endpointslices", "configmaps", "services"}
RESOURCES |= {"statefulsets", "daemonsets", "replicasets", "jobs", "cronjobs"}

# --- a fake API server of plain objects ------------------------------------------------


class ObjectAPI:
    """Objects by path: GET one, GET a collection as a paged list (``labelSelector`` k=v),
    POST a pod with ``dryRun`` (answered by ``dry_run``); ``errors`` answers a path with a
    failure status."""

    def __init__(self, kubeconfig: Path) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, int] = {}
        self.dry_run: Callable[[str, dict[str, Any]], tuple[int, Any]] = lambda _namespace, pod: (
            201,
            pod,
        )
        self.posted: list[dict[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                self.answer(
                    *api.get(parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()})
                )

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.posted.append(body)
                self.answer(*api.dry_run(urlsplit(self.path).path.split("/")[4], body))

            def answer(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.kubeconfig = kubeconfig
        write_kubeconfig(kubeconfig, f"http://127.0.0.1:{self.server.server_address[1]}")

    def cluster(self) -> Cluster:
        return cluster_at(self.kubeconfig)

    def get(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        if path in self.errors:
            code = self.errors[path]
            return code, {"kind": "Status", "code": code, "message": f"{path} says no"}
        if path in self.objects:
            return 200, self.objects[path]
        head, _, resource = path.rpartition("/")
        if resource not in RESOURCES:
            return 404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "no"}
        wanted = dict(p.split("=", 1) for p in query.get("labelSelector", "").split(",") if p)
        items = [
            obj
            for key, obj in sorted(self.objects.items())
            if (parent := key.rpartition("/")[0]) == path
            or (
                (parent.startswith(f"{head}/namespaces/") and parent.endswith(f"/{resource}"))
                and parent.count("/") == path.count("/") + 2
            )
            if wanted.items() <= (obj.get("metadata", {}).get("labels") or {}).items()
        ]
        start, limit = int(query.get("continue") or 0), int(query.get("limit") or len(items))
        metadata = {"resourceVersion": "1"}
        if start + limit < len(items):
            metadata["continue"] = str(start + limit)
        return 200, {"metadata": metadata, "items": items[start : start + limit]}


def write_kubeconfig(path: Path, server: str) -> None:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: '{server}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )


def cluster_at(kubeconfig: Path) -> Cluster:
    connection = kube.Connection(kube.load_configuration(kubeconfig), connect_timeout=5)
    return Cluster(connection, timeout=5)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ObjectAPI]:
    server = ObjectAPI(tmp_path / "kubeconfig")
    yield server
    server.server.shutdown()
    server.server.server_close()


def ctx(**fields: Any) -> c.Context:
    return c.Context(host="h", **fields)


FOUND = c.WebhookConfiguration(exists=True, service=SERVICE)


def hook(name: str, service: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
    client = {"service": service or {"namespace": "mesh-system", "name": "sidecar-injector"}}
    return {"name": name, "clientConfig": {**client, **config}}


def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


# --- the install -----------------------------------------------------------------------


def test_the_api_step_reads_the_version_or_keeps_the_error(api: ObjectAPI) -> None:
    api.objects["/version"] = {"gitVersion": "v1.33.1"}
    assert di.find_api(api.cluster(), ctx()) == c.ApiAnswer("v1.33.1")
    api.errors["/version"] = 503
    assert di.find_api(api.cluster(), ctx()).error == "HTTP 503: /version says no"


def test_the_webhook_step_finds_the_one_service_every_webhook_calls(api: ObjectAPI) -> None:
    path = f"{CONFIGURATIONS}/sidecar-injector"
    annotations = {"cert-manager.io/inject-ca-from": "mesh-system/serving"}
    api.objects[path] = {
        "metadata": {"annotations": annotations},
        "webhooks": [hook("a"), hook("b"), "junk"],
    }
    found = di.find_webhook(api.cluster(), ctx())
    assert (found.exists, found.service, found.cert_manager) == (
        True,
        SERVICE,
        "mesh-system/serving",
    )
    assert [h["name"] for h in found.webhooks] == ["a", "b"]
    api.objects[path] = {
        "webhooks": [hook("a"), hook("b", {"namespace": "x", "name": "y", "port": 8443})]
    }
    split = di.find_webhook(api.cluster(), ctx())
    assert (split.service, split.services) == (
        None,
        (("mesh-system", "sidecar-injector", 443), ("x", "y", 8443)),
    )
    api.objects[path] = {
        "webhooks": [{"name": "u", "clientConfig": {"url": "https://x"}}, hook("b")]
    }
    assert di.find_webhook(api.cluster(), ctx()).calls_url == "u"
    missing = di.find_webhook(api.cluster(), ctx(options=Options(configuration="other")))
    assert missing == c.WebhookConfiguration()


def deployment(name: str, labels: dict[str, str], args: list[str]) -> dict[str, Any]:
    volume = {"name": "config", "configMap": {"name": "injector-config"}}
    mount = {"name": "config", "mountPath": "/etc/config"}
    container = {"name": "injector", "args": args, "volumeMounts": [mount]}
    template = {
        "metadata": {"labels": labels},
        "spec": {"containers": [container], "volumes": [volume]},
    }
    return {"metadata": {"name": name}, "spec": {"template": template}}


def install_injector(
    api: ObjectAPI, *, selector: dict[str, str] | None, config: str | None
) -> None:
    api.objects[f"{MESH}/services/sidecar-injector"] = {
        "spec": {"selector": selector} if selector else {}
    }
    api.objects[f"{APPS}/deployments/other"] = deployment("other", {"app": "other"}, [])
    args = ["serve", "--config", "/etc/config/config.yaml"]
    api.objects[f"{APPS}/deployments/sidecar-injector"] = deployment(
        "sidecar-injector", {"app": "injector"}, args
    )
    if config is not None:
        api.objects[f"{MESH}/configmaps/injector-config"] = {"data": {"config.yaml": config}}


def injector(api: ObjectAPI) -> c.Injector:
    cluster = api.cluster()
    return di.find_injector(
        cluster, ctx(webhook=FOUND, service=di.find_service(cluster, ctx(webhook=FOUND)))
    )


def test_the_injector_step_reads_the_config_the_deployment_behind_the_service_mounts(
    api: ObjectAPI,
) -> None:
    install_injector(
        api, selector={"app": "injector"}, config="excludedNamespaces: [kube-system, legacy]\n"
    )
    found = injector(api)
    assert found.deployment_name == "sidecar-injector"
    assert (found.config_map, found.config_key, found.config_error) == (
        "injector-config",
        "config.yaml",
        "",
    )
    assert found.config.excluded_namespaces == ("kube-system", "legacy")
    # A Service without a selector is matched to the Deployment of its name.
    install_injector(api, selector=None, config="logLevel: loud\n")
    broken = injector(api)
    assert broken.deployment_name == "sidecar-injector"
    assert broken.config_error.startswith("ConfigMap mesh-system/injector-config")
    assert broken.config == InjectorConfig()


def test_the_injector_step_keeps_what_it_could_not_find(api: ObjectAPI) -> None:
    install_injector(api, selector={"app": "injector"}, config=None)
    missing = injector(api)
    assert (missing.config_map, missing.config_text, missing.config_map_error) == (
        "injector-config",
        None,
        "",
    )
    api.errors[f"{MESH}/configmaps/injector-config"] = 403
    assert injector(api).config_map_error.startswith("HTTP 403")
    api.errors[f"{APPS}/deployments"] = 403
    assert injector(api).error.startswith("HTTP 403")
    assert di.find_injector(api.cluster(), ctx()) == c.Injector()  # no Service to follow


def test_the_endpoints_step_reads_the_slices_of_the_service_on_the_webhooks_port(
    api: ObjectAPI,
) -> None:
    service = c.ServiceObject({"spec": {"ports": [{"name": "https", "port": 443}]}})
    labels = {"kubernetes.io/service-name": "sidecar-injector"}
    api.objects[f"{SLICES}/a"] = {
        "metadata": {"labels": labels},
        "ports": [{"name": "https", "port": 8443}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "p1"}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
        ],
    }
    api.objects[f"{SLICES}/b"] = {
        "metadata": {"labels": {"kubernetes.io/service-name": "other"}},
        "ports": [{"name": "https", "port": 8443}],
        "endpoints": [{"addresses": ["10.9.9.9"]}],
    }
    found = di.find_endpoints(api.cluster(), ctx(webhook=FOUND, service=service))
    assert found == c.Endpoints(
        "https",
        ready=(c.Endpoint("10.0.0.1", 8443, "p1"),),
        unready=(c.Endpoint("10.0.0.2", 8443, None),),
    )
    elsewhere = c.WebhookConfiguration(
        exists=True, service=c.ServiceRef("mesh-system", "sidecar-injector", 9443)
    )
    assert (
        di.find_endpoints(api.cluster(), ctx(webhook=elsewhere, service=service)).port_name is None
    )


@pytest.mark.parametrize(
    ("bundle", "problem"),
    [
        ("%%%", c.BundleProblem("a", "not-base64")),
        ("", c.BundleProblem("a, b", "empty")),
        (
            b64(b"not a certificate"),
            c.BundleProblem("a, b", "no-certificate", "caBundle holds no PEM certificate"),
        ),
    ],
)
def test_the_bundles_step_refuses_a_bundle_nothing_can_be_verified_with(
    bundle: str, problem: c.BundleProblem
) -> None:
    hooks = (hook("a", caBundle=bundle), hook("b", caBundle=bundle))
    assert (
        di.find_bundles(
            cast(Cluster, None), ctx(webhook=c.WebhookConfiguration(webhooks=hooks))
        ).problem
        == problem
    )


def test_the_bundles_step_groups_webhooks_by_bundle() -> None:
    other = certs.make_ca()
    hooks = (
        hook("a", caBundle=b64(CA.cert_pem())),
        hook("b", caBundle=b64(other.cert_pem())),
        hook("c", caBundle=b64(CA.cert_pem())),
    )
    found = di.find_bundles(
        cast(Cluster, None), ctx(webhook=c.WebhookConfiguration(webhooks=hooks))
    )
    assert found.pems == ((CA.cert_pem(), "a, c"), (other.cert_pem(), "b"))
    assert found.certificates["a, c"] == (CA.cert,)


@contextlib.contextmanager
def tls_server(pair: certs.KeyPair, tmp_path: Path) -> Iterator[int]:
    """Complete TLS handshakes with ``pair`` on 127.0.0.1; yield the port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    (tmp_path / "tls.crt").write_bytes(pair.cert_pem())
    (tmp_path / "tls.key").write_bytes(pair.key_pem())
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            conn, _ = listener.accept()
            with (
                conn,
                contextlib.suppress(OSError),
                context.wrap_socket(conn, server_side=True) as tls,
            ):
                tls.recv(1)

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    try:
        yield port
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), 1).close()
        listener.close()


@pytest.mark.parametrize("connect", ["direct", "auto"])
def test_the_served_step_dials_each_endpoint_and_judges_it_by_each_bundle(
    tmp_path: Path, connect: Any
) -> None:
    other = certs.make_ca()
    pems = ((CA.cert_pem(), "a"), (other.cert_pem(), "b"))
    with tls_server(LEAF, tmp_path) as port:
        endpoint = c.Endpoint("127.0.0.1", port, "injector-a")
        context = ctx(
            options=Options(connect=connect),
            webhook=FOUND,
            endpoints=c.Endpoints("https", ready=(endpoint,)),
            bundles=c.Bundles(pems=pems),
        )
        (found,) = di.find_served(cast(Cluster, None), context)
    assert (found.endpoint, found.via) == (endpoint, "direct")
    (a, ours), (b, theirs) = found.verdicts
    assert (a, ours.signed_by_bundle, ours.leaf) == ("a", True, LEAF.cert)
    assert (b, theirs.signed_by_bundle, theirs.leaf) == ("b", False, LEAF.cert)
    assert (
        di.find_served(cast(Cluster, None), ctx(webhook=FOUND, bundles=c.Bundles(pems=pems))) == ()
    )


# --- namespaces, dry-run pods, pods ----------------------------------------------------


@pytest.fixture
def namespace_api(tmp_path: Path) -> Iterator[tuple[FakeKubeAPI, Cluster]]:
    fake = FakeKubeAPI().start()
    write_kubeconfig(tmp_path / "kubeconfig", fake.url)
    yield fake, cluster_at(tmp_path / "kubeconfig")
    fake.stop()


def test_the_namespaces_step_reads_every_namespace_in_pages(
    namespace_api: tuple[FakeKubeAPI, Cluster],
) -> None:
    fake, cluster = namespace_api
    for index in range(600):
        fake.add(f"ns-{index:03}")
    fake.add(
        "shop",
        {"sidecar-injection": "enabled"},
        {"sidecar.mesh.io/log-level": "debug", "other": "x"},
    )
    found = dp.find_namespaces(cluster, ctx())
    assert len(found.by_name) == 601
    assert fake.list_limits == [500, 500]
    assert found.by_name["shop"] == NamespaceInfo(
        "shop",
        MappingProxyType({"sidecar-injection": "enabled"}),
        MappingProxyType({"sidecar.mesh.io/log-level": "debug"}),
    )


def test_the_namespaces_step_reads_only_the_one_asked_for_and_the_excluded(
    namespace_api: tuple[FakeKubeAPI, Cluster],
) -> None:
    fake, cluster = namespace_api
    for name in ("shop", "kube-system", "cart"):
        fake.add(name)
    found = dp.find_namespaces(cluster, ctx(options=Options(namespace="shop")))
    assert sorted(found.by_name) == ["kube-system", "shop"]
    assert fake.requests["list"] == 0
    fake.stop()
    assert dp.find_namespaces(cluster, ctx()).error.startswith("cannot read the namespaces: ")


def opted(*names: str) -> c.Namespaces:
    infos = {
        n: NamespaceInfo(
            n, MappingProxyType({"sidecar-injection": "enabled"} if n != "default" else {})
        )
        for n in names
    }
    return c.Namespaces(MappingProxyType(infos))


def injecting(namespace: str, pod: dict[str, Any]) -> tuple[int, Any]:
    labels = {"sidecar-injection": "enabled"} if namespace != "default" else {}
    return 201, patched(
        inject(
            pod,
            namespace=NamespaceInfo(namespace, MappingProxyType(labels)),
            config=InjectorConfig(),
        )
    )


def test_the_dry_run_step_learns_the_running_injector_from_the_first_injected_pod(
    api: ObjectAPI,
) -> None:
    api.dry_run = injecting
    found = dp.find_dry_runs(api.cluster(), ctx(namespaces=opted("shop", "cart")))
    assert found.outcomes == (("cart", ""), ("shop", ""))
    assert found.reference == c.Reference(__version__, True)
    assert api.posted[0]["metadata"]["generateName"] == "sidecar-injector-check-"


def test_the_dry_run_step_says_what_happened_to_a_pod_that_came_back_otherwise(
    api: ObjectAPI,
) -> None:
    answers = {
        "a": (201, {"spec": {"containers": [{"name": "app"}]}}),
        "b": (
            400,
            {"kind": "Status", "code": 400, "message": "admission webhook denied the request"},
        ),
        "c": (201, {"spec": {"containers": [{"name": "mesh-proxy"}]}}),
        "d": (
            201,
            {
                "metadata": {"annotations": {"sidecar.mesh.io/status": '{"version": "0.0.1"}'}},
                "spec": {"initContainers": [{"name": "mesh-proxy"}]},
            },
        ),
    }
    api.dry_run = lambda namespace, _pod: answers[namespace]
    found = dp.find_dry_runs(api.cluster(), ctx(namespaces=opted("a", "b", "c", "d")))
    assert found.outcomes == (
        ("a", "admitted without mesh-proxy (the webhook was not called, or skipped it)"),
        ("b", "refused: HTTP 400: admission webhook denied the request"),
        ("c", "injected, but without the status annotation"),
        ("d", ""),
    )
    assert found.reference == c.Reference(
        "0.0.1",
        False,
        f"container digests not compared: the injector is 0.0.1, this check {__version__}",
    )


def test_the_dry_run_step_opts_a_pod_in_by_label_in_default_when_no_namespace_is(
    api: ObjectAPI,
) -> None:
    api.dry_run = injecting
    found = dp.find_dry_runs(api.cluster(), ctx(namespaces=opted("default")))
    assert (found.opt_in_label, found.outcomes) == (True, (("default", ""),))
    assert api.posted[0]["metadata"]["labels"]["sidecar.mesh.io/inject"] == "true"
    assert (
        dp.find_dry_runs(
            api.cluster(), ctx(options=Options(namespace="x"), namespaces=opted("default"))
        )
        == c.DryRuns()
    )


def test_the_pod_scan_finds_outdated_sidecars_and_the_workloads_that_own_them(
    api: ObjectAPI,
) -> None:
    current = injecting(
        "shop",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "now"},
            "spec": {"containers": [{"name": "app"}]},
        },
    )[1]
    old = json.loads(json.dumps(current))
    status = json.loads(old["metadata"]["annotations"]["sidecar.mesh.io/status"])
    old["metadata"]["annotations"]["sidecar.mesh.io/status"] = json.dumps(
        {**status, "version": "0.0.1"}
    )
    old["metadata"].update(
        name="web-1", ownerReferences=[{"kind": "ReplicaSet", "name": "web-7d", "controller": True}]
    )
    unreadable = {"metadata": {"name": "odd", "annotations": {"sidecar.mesh.io/status": "{"}}}
    for pod in (current, old, unreadable, {"metadata": {"name": "plain"}}):
        api.objects[f"/api/v1/namespaces/shop/pods/{pod['metadata']['name']}"] = {
            **pod,
            "metadata": {**pod["metadata"], "namespace": "shop"},
        }
    api.objects["/apis/apps/v1/namespaces/shop/replicasets/web-7d"] = {
        "metadata": {"ownerReferences": [{"kind": "Deployment", "name": "web", "controller": True}]}
    }
    scan = dp.find_outdated(api.cluster(), ctx(namespaces=opted("shop")))
    report = scan.report
    assert (scan.error, report.scanned, report.injected, report.unreadable, report.complete) == (
        "",
        4,
        2,
        1,
        True,
    )
    assert list(report.outdated) == [Workload("shop", "Deployment", "web")]
    assert report.outdated[Workload("shop", "Deployment", "web")].sample == ["web-1"]
    api.errors["/api/v1/pods"] = 403
    assert (
        dp.find_outdated(api.cluster(), ctx()).error
        == "cannot list pods: HTTP 403: /api/v1/pods says no"
    )


# --- the workloads' pod templates, judged against the locks ------------------------------


def workload(
    kind: str, name: str, annotations: dict[str, str], *, owner: str | None = None, **meta: Any
) -> dict[str, Any]:
    template = {
        "metadata": {"annotations": annotations, **meta},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }
    spec = (
        {"jobTemplate": {"spec": {"template": template}}}
        if kind == "CronJob"
        else {"template": template}
    )
    metadata: dict[str, Any] = {"name": name}
    if owner is not None:
        metadata["ownerReferences"] = [{"kind": owner, "name": "x", "controller": True}]
    return {"metadata": metadata, "spec": spec}


def place(api: ObjectAPI, namespace: str, obj: dict[str, Any], kind: str) -> None:
    group = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    obj["metadata"]["namespace"] = namespace
    api.objects[
        f"/apis/{group}/namespaces/{namespace}/{kind.lower()}s/{obj['metadata']['name']}"
    ] = obj


def test_the_templates_step_finds_the_workloads_that_change_a_locked_setting(
    api: ObjectAPI,
) -> None:
    xds = "sidecar.mesh.io/xds-address"
    ports = "sidecar.mesh.io/exclude-inbound-ports"
    shop = NamespaceInfo(
        "shop",
        MappingProxyType({"sidecar-injection": "enabled", ports: "9090_9091"}),
        MappingProxyType({xds: "xds.mesh:15010"}),
    )
    plain = NamespaceInfo("plain", MappingProxyType({}))
    place(api, "shop", workload("Deployment", "web", {xds: "evil:443"}), "Deployment")
    place(api, "shop", workload("StatefulSet", "db", {ports: "9091,9090"}), "StatefulSet")
    place(api, "shop", workload("DaemonSet", "agent", {ports: "9090"}), "DaemonSet")
    place(
        api,
        "shop",
        workload("ReplicaSet", "web-7d", {xds: "evil:443"}, owner="Deployment"),
        "ReplicaSet",
    )
    place(api, "shop", workload("ReplicaSet", "lone", {xds: "evil:443"}), "ReplicaSet")
    place(api, "shop", workload("Job", "sweep-1", {xds: "evil:443"}, owner="CronJob"), "Job")
    place(api, "shop", workload("CronJob", "sweep", {xds: "xds.mesh:15010"}), "CronJob")
    place(
        api,
        "shop",
        workload(
            "Deployment", "out", {xds: "evil:443"}, labels={"sidecar.mesh.io/inject": "false"}
        ),
        "Deployment",
    )
    place(
        api,
        "plain",
        workload("Deployment", "in", {xds: "evil:443"}, labels={"sidecar.mesh.io/inject": "true"}),
        "Deployment",
    )
    place(api, "plain", workload("Deployment", "unmeshed", {xds: "evil:443"}), "Deployment")
    config = InjectorConfig(locked_settings=frozenset({"xds-address", "exclude-inbound-ports"}))
    context = ctx(
        injector=c.Injector(config=config),
        namespaces=c.Namespaces(MappingProxyType({"shop": shop, "plain": plain})),
    )
    found = dt.find_templates(api.cluster(), context)
    assert (found.error, found.problems, found.stopped, found.more) == ("", (), "", 0)
    assert found.scanned == 8  # the owned ReplicaSet and Job are judged through their owners
    assert sorted((str(t), t.key, t.value, t.in_force, t.source) for t in found.conflicts) == [
        ("plain/deployment/in", xds, "evil:443", "", "built-in default"),
        ("shop/daemonset/agent", ports, "9090", "9090,9091", "namespace label"),
        ("shop/deployment/web", xds, "evil:443", "xds.mesh:15010", "namespace annotation"),
        ("shop/replicaset/lone", xds, "evil:443", "xds.mesh:15010", "namespace annotation"),
    ]
    assert dt.find_templates(api.cluster(), ctx(namespaces=context.namespaces)) == c.Templates()
    api.errors["/apis/batch/v1/cronjobs"] = 403
    cut = dt.find_templates(api.cluster(), context)
    assert cut.problems == ("cannot list cronjobs: HTTP 403: /apis/batch/v1/cronjobs says no",)
    assert len(cut.conflicts) == 4


def test_the_templates_step_reads_one_namespace_and_keeps_what_it_could_not_read(
    api: ObjectAPI,
) -> None:
    xds = "sidecar.mesh.io/xds-address"
    enabled = MappingProxyType({"sidecar-injection": "enabled"})
    bad = NamespaceInfo("bad", enabled, MappingProxyType({xds: "nope"}))
    place(api, "bad", workload("Deployment", "web", {xds: "evil:443"}), "Deployment")
    place(api, "other", workload("Deployment", "web", {xds: "evil:443"}), "Deployment")
    config = InjectorConfig(locked_settings=frozenset({"xds-address"}))
    context = ctx(
        options=Options(namespace="bad"),
        injector=c.Injector(config=config),
        namespaces=c.Namespaces(MappingProxyType({"bad": bad})),
    )
    found = dt.find_templates(api.cluster(), context)
    assert (found.scanned, found.conflicts) == (1, ())
    assert found.problems == (
        "namespace bad: namespace annotation sidecar.mesh.io/xds-address='nope' is invalid:"
        " 'nope' is not host:port",
    )
    for _kind, group, resource, _owner in dt.KINDS:
        api.errors[f"/apis/{group}/namespaces/bad/{resource}"] = 403
    assert dt.find_templates(api.cluster(), context).error == (
        "cannot list deployments: HTTP 403: /apis/apps/v1/namespaces/bad/deployments says no"
    )
