"""What certificate an endpoint really serves, and whether a ``caBundle`` verifies it.

kube-apiserver calls the webhook through its Service, dials one of the
Service's ready endpoints, and verifies the served chain against the webhook's
``caBundle`` for the name ``<service>.<namespace>.svc``, with Go's
``crypto/x509``. ``check`` asks the same question of every ready endpoint the
same way, so a wrong bundle, a certificate for another name or an expired one
shows up before the apiserver meets it:

- a TLS 1.2+ handshake with SNI ``<service>.<namespace>.svc``, trusting only
  the bundle's certificates, each of them an anchor even when it is not
  self-signed (Go does the same; OpenSSL needs ``VERIFY_X509_PARTIAL_CHAIN``),
  and matching the name against the certificate's DNS names only (Go ignores
  the Common Name since 1.15; so does ``hostname_checks_common_name=False``);
- when that fails, a second handshake that verifies nothing fetches the
  served certificate, so the result can say what is wrong with it (whose
  certificate it is, for which names, until when).

OpenSSL verifies a chain in this order: build it up to an anchor, check the
name, then signatures and validity periods from the anchor down. So "the
certificate has expired" for the served certificate itself means everything
before it held: the bundle does sign it, for the right name. That is how the
``caBundle`` verdict and the expiry verdict stay separate.
"""

from __future__ import annotations

import datetime
import hashlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

# OpenSSL's X509_V_ERR_* codes that the explanations below tell apart.
CERT_NOT_YET_VALID: Final = 9
CERT_HAS_EXPIRED: Final = 10
HOSTNAME_MISMATCH: Final = 62

# How long one handshake may take, connection set-up included.
HANDSHAKE_TIMEOUT: Final = 5.0

Opener = Callable[[], Any]
"""Opens a fresh connected socket (or socket-like object) to the endpoint."""


class BundleError(ValueError):
    """The caBundle holds no usable certificate."""


@dataclass(frozen=True)
class Served:
    """One endpoint's answer: the certificate it served and the bundle's verdict on it.

    ``error`` is set when no handshake completed (nothing to judge);
    ``verify_code`` is ``None`` when the bundle verified the certificate,
    otherwise OpenSSL's code and ``verify_message`` its text.
    """

    leaf: x509.Certificate | None
    verify_code: int | None = None
    verify_message: str = ""
    error: str = ""

    @property
    def verified(self) -> bool:
        """The bundle verifies the served certificate for the name, expiry included."""
        return not self.error and self.verify_code is None

    @property
    def signed_by_bundle(self) -> bool:
        """The bundle verifies the chain and the name; the certificate may have expired."""
        if self.error:
            return False
        return self.verify_code is None or (
            self.verify_code == CERT_HAS_EXPIRED and self.leaf is not None and expired(self.leaf)
        )


def bundle_certificates(bundle: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM caBundle; ``BundleError`` when it holds none."""
    try:
        certs = x509.load_pem_x509_certificates(bundle)
    except ValueError:
        certs = []
    if not certs:
        raise BundleError("caBundle holds no PEM certificate")
    return certs


def _context(bundle: bytes | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if bundle is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context.load_verify_locations(cadata=bundle.decode("ascii", errors="replace"))
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.hostname_checks_common_name = False
    return context


def _handshake(open_socket: Opener, context: ssl.SSLContext, server_name: str) -> bytes:
    """Connect, complete a TLS handshake and return the served certificate (DER)."""
    sock = open_socket()
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        # A port-forward gives a wrapper around one end of a socketpair;
        # the TLS layer wants the real socket object.
        raw: socket.socket = sock._socket if hasattr(sock, "_socket") else sock
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    finally:
        sock.close()
    if not der:
        raise ssl.SSLError("the server sent no certificate")
    return der


def probe(open_socket: Opener, *, server_name: str, bundle: bytes) -> Served:
    """Verify what the endpoint serves against ``bundle`` for ``server_name``.

    Connection and handshake failures (refused, reset, timeout, a server that
    is not TLS) come back as ``error``; a bundle without certificates raises
    ``BundleError`` before anything is dialled.
    """
    bundle_certificates(bundle)
    verifying = _context(bundle)
    try:
        der = _handshake(open_socket, verifying, server_name)
        return Served(leaf=x509.load_der_x509_certificate(der))
    except ssl.SSLCertVerificationError as err:
        code: int | None = err.verify_code
        message = str(err.verify_message)
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
        return Served(leaf=None, error=_describe(err))
    try:
        der = _handshake(open_socket, _context(None), server_name)
    except (OSError, ValueError) as err:
        return Served(leaf=None, verify_code=code, verify_message=message, error=_describe(err))
    return Served(
        leaf=x509.load_der_x509_certificate(der), verify_code=code, verify_message=message
    )


def _describe(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return f"no TLS handshake within {HANDSHAKE_TIMEOUT:g}s"
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
    return " ".join(text.split())[:300]


def now() -> datetime.datetime:
    """The current time, in UTC (certificates' validity is in UTC)."""
    return datetime.datetime.now(datetime.UTC)


def expired(cert: x509.Certificate, at: datetime.datetime | None = None) -> bool:
    """Whether ``cert``'s validity ended before ``at`` (default: now)."""
    return cert.not_valid_after_utc <= (at or now())


def days_left(cert: x509.Certificate, at: datetime.datetime | None = None) -> float:
    """Days until ``cert`` expires (negative once it has)."""
    return (cert.not_valid_after_utc - (at or now())).total_seconds() / 86400.0


def dns_names(cert: x509.Certificate) -> list[str]:
    """The certificate's DNS subject alternative names (what clients match a name against)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(sans.get_values_for_type(x509.DNSName))


def common_name(name: x509.Name) -> str:
    """The CN of a name, or the whole name when it has none."""
    found = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if found:
        value = found[0].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return name.rfc4514_string() or "(empty name)"


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, hex: what ``openssl x509 -fingerprint -sha256`` shows."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def explain(served: Served, *, server_name: str, bundle: list[x509.Certificate]) -> str:
    """Why the bundle does not verify the served certificate, in one sentence."""
    leaf = served.leaf
    if served.error:
        return served.error
    if leaf is None or served.verify_code is None:
        return "verified"
    issuer = common_name(leaf.issuer)
    anchors = ", ".join(sorted({common_name(c.subject) for c in bundle}))
    if served.verify_code == HOSTNAME_MISMATCH:
        names = ", ".join(dns_names(leaf)) or "no DNS names"
        return f"the served certificate is for {names}, not {server_name}"
    if served.verify_code == CERT_HAS_EXPIRED:
        if expired(leaf):
            return (
                f"the served certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
        return f"a CA in the chain has expired ({served.verify_message})"
    if served.verify_code == CERT_NOT_YET_VALID:
        return (
            f"the served certificate is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is a clock wrong?)"
        )
    return (
        f"caBundle ({anchors}) does not verify the served certificate issued by {issuer}: "
        f"{served.verify_message}"
    )
