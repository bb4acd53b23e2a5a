"""``sidecar-injector certs --secret``: the certificates kept in Secrets, made in the cluster.

What the Helm chart's hook Job runs before install and upgrade and after
install (charts/sidecar-injector, ``certificates.mode: job``), with what
``certs --out DIR`` does on disk:

- the CA lives in a Secret of its own (``ca.crt``, ``ca.key``), which the
  injector never mounts; it is made the first time and reused ever after, so
  the ``caBundle`` the API server trusts stays valid across upgrades;
- the serving pair goes into the Secret the Deployment mounts (``tls.crt``,
  ``tls.key``, ``ca.crt``); a certificate that this CA issued for this
  Service and that has more than :data:`RENEW_DAYS` left is kept, anything
  else is replaced (the server reloads it without a restart);
- the webhook configuration, once it exists, gets the CA as every
  webhook's ``caBundle`` (a JSON patch of just those fields, each guarded by
  a test of the webhook's name).

Each write is one bounded request (``webhook.cluster.reader``); an object
created or changed meanwhile (a 409) is read again, a few times.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from webhook.cluster.reader import Cluster, ClusterError
from webhook.pki.certs import (
    CA_CERT,
    CA_DAYS,
    CA_KEY,
    TLS_CERT,
    TLS_KEY,
    CertError,
    KeyPair,
    ca_from_pem,
    make_ca,
    make_serving_cert,
    service_names,
)

FIELD_MANAGER: Final = "sidecar-injector-certs"
# A serving certificate with less than this left is replaced (check warns at 30).
RENEW_DAYS: Final = 30
ATTEMPTS: Final = 3
_CONFIGURATIONS: Final = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


@dataclass(frozen=True)
class Done:
    """What one run did, for its one line of output."""

    ca_made: bool
    serving_written: bool
    not_after: datetime.datetime
    bundles_set: int | None  # webhooks whose caBundle was written; None: no configuration yet


def ensure(
    cluster: Cluster,
    *,
    namespace: str,
    service: str,
    secret: str,
    ca_secret: str,
    configuration: str | None,
    days: int,
    now: datetime.datetime | None = None,
) -> Done:
    """The CA, the serving pair and the caBundle in place; raises ``CertError`` (one line)."""
    now = now or datetime.datetime.now(datetime.UTC)
    for _ in range(ATTEMPTS):
        try:
            ca, ca_made = _ca(cluster, namespace, ca_secret, days)
            written, not_after = _serving(
                cluster, namespace, secret, ca, service=service, days=days, now=now
            )
            bundles = None
            if configuration is not None:
                bundles = _bundles(cluster, configuration, ca.cert_pem())
        except _Conflict:
            continue
        except ClusterError as err:
            raise CertError(str(err)) from None
        return Done(ca_made, written, not_after, bundles)
    raise CertError(f"the Secrets in {namespace} kept changing ({ATTEMPTS} attempts); run again")


class _Conflict(Exception):
    """Created or changed by someone else between the read and the write."""


def _secret_path(namespace: str, name: str = "") -> str:
    base = f"/api/v1/namespaces/{quote(namespace, safe='')}/secrets"
    return f"{base}/{quote(name, safe='')}" if name else base


def _data(secret: dict[str, Any] | None, key: str) -> bytes | None:
    value = ((secret or {}).get("data") or {}).get(key)
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _write_secret(
    cluster: Cluster,
    namespace: str,
    name: str,
    current: dict[str, Any] | None,
    *,
    kind: str,
    data: dict[str, bytes],
) -> None:
    """Create the Secret, or replace it as read (its resourceVersion with it)."""
    encoded = {key: base64.b64encode(value).decode("ascii") for key, value in data.items()}
    if current is None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": kind,
            "data": encoded,
        }
        method, path = "POST", _secret_path(namespace)
    else:
        body = {**current, "type": current.get("type", kind), "data": encoded}
        method, path = "PUT", _secret_path(namespace, name)
    try:
        cluster.write(method, path, body, field_manager=FIELD_MANAGER)
    except ClusterError as err:
        if err.status == 409:
            raise _Conflict from None
        raise


def _ca(cluster: Cluster, namespace: str, name: str, days: int) -> tuple[KeyPair, bool]:
    """The CA from its Secret, or a new one written there."""
    current = cluster.get(_secret_path(namespace, name))
    cert, key = _data(current, CA_CERT), _data(current, CA_KEY)
    where = f"Secret {namespace}/{name}"
    if cert is not None and key is not None:
        return ca_from_pem(
            cert, key, cert_path=f"{where} {CA_CERT}", key_path=f"{where} {CA_KEY}"
        ), False
    if current is not None:
        # Half a CA: making a new one would silently void the caBundle in use.
        raise CertError(f"{where} has no {CA_CERT} and {CA_KEY}; restore them, or delete it")
    ca = make_ca(days=max(days, CA_DAYS))
    _write_secret(
        cluster,
        namespace,
        name,
        None,
        kind="Opaque",
        data={CA_CERT: ca.cert_pem(), CA_KEY: ca.key_pem()},
    )
    return ca, True


def _serving(
    cluster: Cluster,
    namespace: str,
    name: str,
    ca: KeyPair,
    *,
    service: str,
    days: int,
    now: datetime.datetime,
) -> tuple[bool, datetime.datetime]:
    """Keep a serving certificate that still fits, else write a new pair; (written, expiry)."""
    current = cluster.get(_secret_path(namespace, name))
    kept = _fits(_data(current, TLS_CERT), ca, service=service, namespace=namespace, now=now)
    if kept is not None and _data(current, TLS_KEY) and _data(current, CA_CERT) == ca.cert_pem():
        return False, kept
    dns, ips = service_names(service, namespace)
    leaf = make_serving_cert(ca, dns_names=dns, ips=ips, common_name=dns[2], days=days)
    _write_secret(
        cluster,
        namespace,
        name,
        current,
        kind="kubernetes.io/tls",
        data={TLS_CERT: leaf.cert_pem(), TLS_KEY: leaf.key_pem(), CA_CERT: ca.cert_pem()},
    )
    return True, leaf.cert.not_valid_after_utc


def _fits(
    pem: bytes | None, ca: KeyPair, *, service: str, namespace: str, now: datetime.datetime
) -> datetime.datetime | None:
    """The certificate's expiry when ``ca`` issued it for the Service with time to spare."""
    if pem is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem)
        cert.verify_directly_issued_by(ca.cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return None
    if f"{service}.{namespace}.svc" not in sans.get_values_for_type(x509.DNSName):
        return None
    expiry = cert.not_valid_after_utc
    return expiry if expiry - now > datetime.timedelta(days=RENEW_DAYS) else None


def _bundles(cluster: Cluster, name: str, ca_pem: bytes) -> int | None:
    """Every webhook's caBundle set to the CA; how many changed (None: no configuration)."""
    path = f"{_CONFIGURATIONS}/{quote(name, safe='')}"
    found = cluster.get(path)
    if found is None:
        return None
    bundle = base64.b64encode(ca_pem).decode("ascii")
    patch: list[dict[str, Any]] = []
    for index, hook in enumerate(found.get("webhooks") or []):
        if (hook.get("clientConfig") or {}).get("caBundle") == bundle:
            continue
        # The test keeps the patch from landing on another webhook if the
        # list changed since it was read.
        patch.append({"op": "test", "path": f"/webhooks/{index}/name", "value": hook.get("name")})
        patch.append(
            {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": bundle}
        )
    if patch:
        try:
            cluster.write(
                "PATCH",
                path,
                patch,
                field_manager=FIELD_MANAGER,
                content_type="application/json-patch+json",
            )
        except ClusterError as err:
            if err.status in (409, 422):
                raise _Conflict from None
            raise
    return len(patch) // 2
