"""``check``'s discovery steps of the install alone, against the fake API server.

Each step reads one thing of the cluster and turns it into a typed fact of the
context: the API, the webhook configuration, the injector and its config,
the endpoints, the bundles, and what the endpoints serve. Objects come from
the fake API server's object store (``store``); the endpoints are dialled
on a real TLS server. The namespaces, dry-run pods, pods and pod templates
are in ``test_discover_pods.py``.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from harness.fake_kube_api import ObjectStore
from webhook.cluster.reader import Cluster
from webhook.engine.config import InjectorConfig
from webhook.ops.check import Options
from webhook.ops.check import context as c
from webhook.ops.check import discover_install as di
from webhook.pki import certs

SERVICE = c.ServiceRef("mesh-system", "sidecar-injector", 443)
NAME = SERVICE.server_name
CA = certs.make_ca()
LEAF = certs.make_serving_cert(CA, dns_names=[NAME])
CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
MESH = "/api/v1/namespaces/mesh-system"
APPS = "/apis/apps/v1/namespaces/mesh-system"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/mesh-system/endpointslices"


def ctx(**fields: Any) -> c.Context:
    return c.Context(host="h", **fields)


FOUND = c.WebhookConfiguration(exists=True, service=SERVICE)


def hook(name: str, service: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
    client = {"service": service or {"namespace": "mesh-system", "name": "sidecar-injector"}}
    return {"name": name, "clientConfig": {**client, **config}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the install -----------------------------------------------------------------------


def test_the_api_step_reads_the_version_or_keeps_the_error(
    store: ObjectStore, cluster: Cluster
) -> None:
    store.objects["/version"] = {"gitVersion": "v1.33.1"}
    assert di.find_api(cluster, ctx()) == c.ApiAnswer("v1.33.1")
    store.errors["/version"] = 503
    assert di.find_api(cluster, ctx()).error == "HTTP 503: /version says no"


def test_the_webhook_step_finds_the_one_service_every_webhook_calls(
    store: ObjectStore, cluster: Cluster
) -> None:
    path = f"{CONFIGURATIONS}/sidecar-injector"
    annotations = {"cert-manager.io/inject-ca-from": "mesh-system/serving"}
    store.objects[path] = {
        "metadata": {"annotations": annotations},
        "webhooks": [hook("a"), hook("b"), "junk"],
    }
    found = di.find_webhook(cluster, ctx())
    assert (found.exists, found.service, found.cert_manager) == (
        True,
        SERVICE,
        "mesh-system/serving",
    )
    assert [h["name"] for h in found.webhooks] == ["a", "b"]
    store.objects[path] = {
        "webhooks": [hook("a"), hook("b", {"namespace": "x", "name": "y", "port": 8443})]
    }
    split = di.find_webhook(cluster, ctx())
    assert (split.service, split.services) == (
        None,
        (("mesh-system", "sidecar-injector", 443), ("x", "y", 8443)),
    )
    store.objects[path] = {
        "webhooks": [{"name": "u", "clientConfig": {"url": "https://x"}}, hook("b")]
    }
    assert di.find_webhook(cluster, ctx()).calls_url == "u"
    missing = di.find_webhook(cluster, ctx(options=Options(configuration="other")))
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
    store: ObjectStore, *, selector: dict[str, str] | None, config: str | None
) -> None:
    store.objects[f"{MESH}/services/sidecar-injector"] = {
        "spec": {"selector": selector} if selector else {}
    }
    store.objects[f"{APPS}/deployments/other"] = deployment("other", {"app": "other"}, [])
    args = ["serve", "--config", "/etc/config/config.yaml"]
    store.objects[f"{APPS}/deployments/sidecar-injector"] = deployment(
        "sidecar-injector", {"app": "injector"}, args
    )
    if config is not None:
        store.objects[f"{MESH}/configmaps/injector-config"] = {"data": {"config.yaml": config}}


def injector(cluster: Cluster) -> c.Injector:
    return di.find_injector(
        cluster, ctx(webhook=FOUND, service=di.find_service(cluster, ctx(webhook=FOUND)))
    )


def test_the_injector_step_reads_the_config_the_deployment_behind_the_service_mounts(
    store: ObjectStore, cluster: Cluster
) -> None:
    install_injector(
        store, selector={"app": "injector"}, config="excludedNamespaces: [kube-system, legacy]\n"
    )
    found = injector(cluster)
    assert found.deployment_name == "sidecar-injector"
    assert (found.config_map, found.config_key, found.config_error) == (
        "injector-config",
        "config.yaml",
        "",
    )
    assert found.config.excluded_namespaces == ("kube-system", "legacy")
    # A Service without a selector is matched to the Deployment of its name.
    install_injector(store, selector=None, config="logLevel: loud\n")
    broken = injector(cluster)
    assert broken.deployment_name == "sidecar-injector"
    assert broken.config_error.startswith("ConfigMap mesh-system/injector-config")
    assert broken.config == InjectorConfig()


def test_the_injector_step_keeps_what_it_could_not_find(
    store: ObjectStore, cluster: Cluster
) -> None:
    install_injector(store, selector={"app": "injector"}, config=None)
    missing = injector(cluster)
    assert (missing.config_map, missing.config_text, missing.config_map_error) == (
        "injector-config",
        None,
        "",
    )
    store.errors[f"{MESH}/configmaps/injector-config"] = 403
    assert injector(cluster).config_map_error.startswith("HTTP 403")
    store.errors[f"{APPS}/deployments"] = 403
    assert injector(cluster).error.startswith("HTTP 403")
    assert di.find_injector(cluster, ctx()) == c.Injector()  # no Service to follow


def test_the_endpoints_step_reads_the_slices_of_the_service_on_the_webhooks_port(
    store: ObjectStore, cluster: Cluster
) -> None:
    service = c.ServiceObject({"spec": {"ports": [{"name": "https", "port": 443}]}})
    labels = {"kubernetes.io/service-name": "sidecar-injector"}
    store.objects[f"{SLICES}/a"] = {
        "metadata": {"labels": labels},
        "ports": [{"name": "https", "port": 8443}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "p1"}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
        ],
    }
    store.objects[f"{SLICES}/b"] = {
        "metadata": {"labels": {"kubernetes.io/service-name": "other"}},
        "ports": [{"name": "https", "port": 8443}],
        "endpoints": [{"addresses": ["10.9.9.9"]}],
    }
    found = di.find_endpoints(cluster, ctx(webhook=FOUND, service=service))
    assert found == c.Endpoints(
        "https",
        ready=(c.Endpoint("10.0.0.1", 8443, "p1"),),
        unready=(c.Endpoint("10.0.0.2", 8443, None),),
    )
    elsewhere = c.WebhookConfiguration(
        exists=True, service=c.ServiceRef("mesh-system", "sidecar-injector", 9443)
    )
    assert di.find_endpoints(cluster, ctx(webhook=elsewhere, service=service)).port_name is None


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
