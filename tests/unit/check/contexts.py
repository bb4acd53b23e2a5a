"""The contexts ``check``'s checks read, built for one test at a time.

A check is a function of a :class:`~webhook.ops.check.context.Context`:
these build one with the webhook found (unless said otherwise), at a fixed
time, with certificates issued ten days before it.
"""

from __future__ import annotations

import datetime
from types import MappingProxyType
from typing import Any

from webhook.contract.namespaces import NamespaceInfo
from webhook.ops.check import context as c
from webhook.pki import certs, served_cert

NOW = datetime.datetime(2030, 6, 1, tzinfo=datetime.UTC)
SERVICE = c.ServiceRef("mesh-system", "sidecar-injector", 443)
NAME = SERVICE.server_name
CA = certs.make_ca(now=NOW - datetime.timedelta(days=10))
LEAF = certs.make_serving_cert(
    CA, dns_names=[NAME], days=100, now=NOW - datetime.timedelta(days=10)
)
A = c.Endpoint("10.0.0.1", 8443, "injector-a")
B = c.Endpoint("10.0.0.2", 8443, "injector-b")
STATIC_HINT = "render and apply the install from the certificates the injector serves"


def hook(name: str = "pods.sidecar.mesh.io", **extra: Any) -> dict[str, Any]:
    return {"name": name, "failurePolicy": "Fail", **extra}


def webhook(*hooks: dict[str, Any], service: c.ServiceRef | None = SERVICE, **kw: Any) -> Any:
    return c.WebhookConfiguration(exists=True, webhooks=hooks or (hook(),), service=service, **kw)


def namespaces(*infos: NamespaceInfo, **kw: Any) -> c.Namespaces:
    """The namespaces discovery found (``tests.builders.namespace`` builds each)."""
    return c.Namespaces(MappingProxyType({i.name: i for i in infos}), **kw)


def ctx(**fields: Any) -> c.Context:
    """A context with the webhook found unless said otherwise."""
    fields.setdefault("webhook", webhook())
    return c.Context(host="https://api:6443", now=NOW, **fields)


def deployment(name: str = "sidecar-injector", replicas: int = 2) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"replicas": replicas}}


def bundles(*pems: tuple[bytes, str]) -> c.Bundles:
    pems = pems or ((CA.cert_pem(), "pods.sidecar.mesh.io"),)
    certificates = {label: tuple(served_cert.bundle_certificates(pem)) for pem, label in pems}
    return c.Bundles(pems=pems, certificates=MappingProxyType(certificates))


def dialled(endpoint: c.Endpoint, served: served_cert.Served, via: str = "direct") -> c.Dialled:
    return c.Dialled(endpoint, via, (("pods.sidecar.mesh.io", served),))
