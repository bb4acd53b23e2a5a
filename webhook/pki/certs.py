"""A private CA and the webhook's serving certificate, for development and small clusters.

kube-apiserver only calls a webhook over HTTPS and verifies the serving
certificate against the ``caBundle`` of the webhook configuration, for the DNS
name ``<service>.<namespace>.svc``. This module makes that pair of
certificates. Everything is built in memory with ``cryptography`` (so tests can
make certificates without touching disk) and written out only by
:func:`write_certs`, the one edge that does I/O.

Re-running :func:`write_certs` on the same directory keeps the CA and renews
only the leaf: the ``caBundle`` already registered with the cluster stays
valid, and the server picks up the new leaf by hot reload (``webhook.service.tls``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook.contract import constants
from webhook.manifests.files import PEM_LIMIT, FileError, read_file

CA_CERT: Final = "ca.crt"
CA_KEY: Final = "ca.key"
TLS_CERT: Final = "tls.crt"
TLS_KEY: Final = "tls.key"

# Certificates start a little in the past: a node whose clock lags the machine
# that made the certificate would otherwise reject it as "not yet valid".
CLOCK_SKEW: Final = datetime.timedelta(minutes=5)
# The CA outlives many leaf renewals, because replacing it means re-registering
# the caBundle everywhere; ten years unless the leaf itself asks for longer.
CA_DAYS: Final = 3650

# Service and namespace names are RFC 1123 labels in Kubernetes; checking here
# turns a typo into a clear error instead of a certificate nobody can match.
_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

_KEY_MODE: Final = 0o600
_CERT_MODE: Final = 0o644

# Key types this module can sign with when it reuses a CA made elsewhere.
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CertError(Exception):
    """Certificates could not be made or written; the one-line message names the file."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, in memory."""

    cert: x509.Certificate
    key: SigningKey

    def cert_pem(self) -> bytes:
        """The certificate as PEM, the format kube-apiserver's caBundle and OpenSSL expect."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The key as unencrypted PKCS#8 PEM: the server must load it unattended."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class CertFiles:
    """Where :func:`write_certs` put the files, and whether it kept an existing CA."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    ca_reused: bool


def service_names(
    service: str = constants.SERVICE_NAME, namespace: str = constants.SERVICE_NAMESPACE
) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """The SANs of the contract: every name a client may dial the service by.

    kube-apiserver uses ``svc.ns.svc``; the shorter forms serve in-cluster
    clients with search domains, ``localhost``/``127.0.0.1`` serve ``make run``.
    """
    dns = [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        "localhost",
    ]
    for label in (service, namespace):
        if not _DNS_LABEL.fullmatch(label):
            raise CertError(f"{label!r} is not a DNS label (a-z, 0-9, '-', at most 63 characters)")
    return dns, [ipaddress.IPv4Address("127.0.0.1")]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: universally supported by Go's crypto/tls (kube-apiserver) and
    # far cheaper per handshake than RSA of comparable strength.
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(
    *,
    common_name: str = "sidecar-injector CA",
    days: int = CA_DAYS,
    now: datetime.datetime | None = None,
) -> KeyPair:
    """A self-signed CA that can sign serving certificates and nothing below them."""
    if days < 1:
        raise CertError(f"CA validity must be at least 1 day, not {days}")
    start = (now or _now()) - CLOCK_SKEW
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sidecar-injector"),
            # A random suffix keeps two CAs made for the same service apart in
            # trust stores and in error messages that print the issuer.
            x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} {secrets.token_hex(4)}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CLOCK_SKEW + datetime.timedelta(days=days))
        # path_length=0: this CA signs leaves only, never intermediate CAs.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert=cert, key=key)


def make_serving_cert(
    ca: KeyPair,
    *,
    dns_names: Sequence[str],
    ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    common_name: str | None = None,
    days: int = 365,
    now: datetime.datetime | None = None,
) -> KeyPair:
    """A TLS server certificate for ``dns_names``/``ips``, signed by ``ca``.

    ``common_name`` (default: the first DNS name) is only for humans reading
    ``openssl x509``: clients match on the SANs alone.

    Its lifetime is cut to the CA's, so a reused CA never signs a leaf that
    outlives it (clients would reject the chain after the CA expired anyway).
    """
    if days < 1:
        raise CertError(f"certificate validity must be at least 1 day, not {days}")
    if not dns_names:
        raise CertError("a serving certificate needs at least one DNS name")
    start = (now or _now()) - CLOCK_SKEW
    end = min(start + CLOCK_SKEW + datetime.timedelta(days=days), ca.cert.not_valid_after_utc)
    if end <= start + CLOCK_SKEW:
        raise CertError(f"the CA expired on {ca.cert.not_valid_after_utc:%Y-%m-%d}")
    key = _new_key()
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ip) for ip in ips]
    cn = common_name or dns_names[0]
    # A CN holds at most 64 characters; a long name goes without one, and
    # then RFC 5280 wants the SAN extension marked critical.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if len(cn) <= 64 else [])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(rsa_key=isinstance(key, rsa.RSAPrivateKey)), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=len(subject) == 0)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(cert=cert, key=key)


def _key_usage(*, key_cert_sign: bool = False, rsa_key: bool = False) -> x509.KeyUsage:
    # A CA signs certificates (and CRLs, should anyone ever issue one); a leaf
    # signs handshakes, and with RSA also receives the TLS 1.2 key exchange.
    return x509.KeyUsage(
        digital_signature=not key_cert_sign,
        content_commitment=False,
        key_encipherment=rsa_key and not key_cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(ca: KeyPair) -> x509.AuthorityKeyIdentifier:
    # Prefer the CA's own SKI extension: a reused CA made by another tool may
    # have computed it differently from the public-key hash.
    try:
        ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def load_ca(cert_path: Path, key_path: Path) -> KeyPair:
    """Read an existing CA, refusing anything that could not sign a valid leaf."""
    return ca_from_pem(
        _read(cert_path), _read(key_path), cert_path=str(cert_path), key_path=str(key_path)
    )


def ca_from_pem(cert_data: bytes, key_data: bytes, *, cert_path: str, key_path: str) -> KeyPair:
    """A CA from its PEM certificate and key (``cert_path``/``key_path`` name them in errors)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_data)
    except ValueError:
        raise CertError(f"{cert_path}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise CertError(f"{key_path}: the key is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertError(f"{key_path}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertError(f"{key_path}: only EC and RSA CA keys are supported")
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise CertError(f"{key_path}: does not match the certificate in {cert_path}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertError(f"{cert_path}: not a CA certificate (basicConstraints CA:TRUE missing)")
    return KeyPair(cert=cert, key=key)


def _read(path: Path) -> bytes:
    # Bounded: ca.crt linked to /dev/zero or made a FIFO is an error, not a hang.
    try:
        return read_file(path, limit=PEM_LIMIT)
    except FileError as err:
        raise CertError(str(err)) from None


def write_certs(
    out_dir: Path,
    *,
    service: str = constants.SERVICE_NAME,
    namespace: str = constants.SERVICE_NAMESPACE,
    days: int = 365,
) -> CertFiles:
    """Write ``ca.crt``, ``ca.key``, ``tls.crt`` and ``tls.key`` into ``out_dir``.

    An existing CA (both ``ca.crt`` and ``ca.key``) is reused, so only the leaf
    (with a fresh key) changes. Half a CA is an error rather than a silent new
    CA, because replacing the CA invalidates the caBundle the cluster holds.
    Each file is replaced atomically, key before certificate, so a server
    reloading meanwhile sees at worst a mismatched pair and keeps its old one.
    """
    out_dir = Path(out_dir)
    ca_cert, ca_key = out_dir / CA_CERT, out_dir / CA_KEY
    tls_cert, tls_key = out_dir / TLS_CERT, out_dir / TLS_KEY
    have_cert, have_key = ca_cert.exists(), ca_key.exists()
    if have_cert and have_key:
        ca = load_ca(ca_cert, ca_key)
        reused = True
    elif have_cert or have_key:
        present, missing = (ca_cert, ca_key) if have_cert else (ca_key, ca_cert)
        raise CertError(
            f"{missing}: missing next to {present}; restore it, or remove {present.name} "
            "to make a new CA (and re-register the caBundle)"
        )
    else:
        ca = make_ca(days=max(days, CA_DAYS))
        reused = False
    dns, ips = service_names(service, namespace)
    leaf = make_serving_cert(ca, dns_names=dns, ips=ips, common_name=dns[2], days=days)

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CertError(f"{out_dir}: cannot create directory: {err.strerror or err}") from None
    if not reused:
        _write_atomic(ca_key, ca.key_pem(), mode=_KEY_MODE)
        _write_atomic(ca_cert, ca.cert_pem(), mode=_CERT_MODE)
    _write_atomic(tls_key, leaf.key_pem(), mode=_KEY_MODE)
    _write_atomic(tls_cert, leaf.cert_pem(), mode=_CERT_MODE)
    return CertFiles(ca_cert=ca_cert, ca_key=ca_key, cert=tls_cert, key=tls_key, ca_reused=reused)


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half.

    The temporary file is created with its final mode (``O_EXCL``, never
    wider than ``mode``), so a private key is not readable by others at any
    moment; ``fchmod`` then sets the exact mode whatever the umask.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as err:
        raise CertError(f"{path}: cannot write: {err.strerror or err}") from None
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # Durable before it becomes visible: a crash must not leave an empty key.
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CertError(f"{path}: cannot write: {err.strerror or err}") from None


@dataclass(frozen=True)
class Renewed:
    """What :func:`renew_certs` wrote, for whom, and until when it is valid."""

    cert: Path
    key: Path
    service: str
    namespace: str
    not_after: datetime.datetime


def served_service(cert_path: Path) -> tuple[str, str] | None:
    """(service, namespace) from a serving certificate's ``<service>.<namespace>.svc`` DNS name.

    ``None`` when the file is missing, unreadable or names no such service.
    """
    try:
        cert = x509.load_pem_x509_certificate(read_file(cert_path, limit=PEM_LIMIT))
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (FileError, ValueError, x509.ExtensionNotFound):
        return None
    for name in sans.get_values_for_type(x509.DNSName):
        parts = name.split(".")
        if len(parts) == 3 and parts[2] == "svc" and all(map(_DNS_LABEL.fullmatch, parts[:2])):
            return parts[0], parts[1]
    return None


def renew_certs(
    out_dir: Path,
    *,
    service: str | None = None,
    namespace: str | None = None,
    days: int = 365,
) -> Renewed:
    """Reissue ``tls.crt``/``tls.key`` in ``out_dir`` under the CA already there.

    The CA (and so every ``caBundle`` made from it) is left as it is; a
    server reloads the new pair by itself. Without ``ca.crt`` and ``ca.key``
    this refuses rather than make a new CA, which the cluster would not
    trust. ``service`` and ``namespace`` default to those the current
    certificate is for (else the defaults), so a renewal never changes names
    by accident.
    """
    out_dir = Path(out_dir)
    ca_cert, ca_key = out_dir / CA_CERT, out_dir / CA_KEY
    tls_cert, tls_key = out_dir / TLS_CERT, out_dir / TLS_KEY
    have_cert, have_key = ca_cert.exists(), ca_key.exists()
    if not (have_cert and have_key):
        missing = " and ".join(
            p.name for p, ok in ((ca_cert, have_cert), (ca_key, have_key)) if not ok
        )
        raise CertError(
            f"{out_dir}: no CA to reuse ({missing} missing); --renew keeps the CA the cluster"
            " trusts (caBundle), so it needs both; run certs without --renew to make a new CA"
            " and re-register caBundle"
        )
    ca = load_ca(ca_cert, ca_key)
    current = served_service(tls_cert)
    service = service or (current[0] if current else constants.SERVICE_NAME)
    namespace = namespace or (current[1] if current else constants.SERVICE_NAMESPACE)
    dns, ips = service_names(service, namespace)
    leaf = make_serving_cert(ca, dns_names=dns, ips=ips, common_name=dns[2], days=days)
    _write_atomic(tls_key, leaf.key_pem(), mode=_KEY_MODE)
    _write_atomic(tls_cert, leaf.cert_pem(), mode=_CERT_MODE)
    return Renewed(tls_cert, tls_key, service, namespace, leaf.cert.not_valid_after_utc)
