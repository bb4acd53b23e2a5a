"""Certificates and kubeconfigs for the throwaway control plane and stand-in servers.

ECDSA P-256 throughout, made in memory with ``cryptography`` and written to
disk only where a component reads a file.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The apiserver hands out Service cluster IPs from this range and serves the
# "kubernetes" Service on its first address. Nothing routes to it (there is no
# kube-proxy), which is why the apiserver runs with aggregator routing: it
# reaches webhook Services through their EndpointSlices instead.
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
ADMIN_USER = "e2e-admin"


@dataclass(frozen=True)
class Pair:
    """A certificate and its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        """The certificate, PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The key, PKCS#8 PEM, unencrypted."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def issue(
    subject: x509.Name,
    *,
    issuer: Pair | None,
    sans: Sequence[x509.GeneralName] = (),
    usages: Sequence[x509.ObjectIdentifier] = (),
) -> Pair:
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
    return Pair(builder.sign(signer, hashes.SHA256()), key)


def name(common_name: str, *organizations: str) -> x509.Name:
    """A subject: ``O=`` each organization (groups, to kube-apiserver), then ``CN=``."""
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def write(path: Path, data: bytes, *, private: bool = False) -> Path:
    """Write ``data``; owner-only when ``private``."""
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
    ca = issue(name("e2e-test-ca"), issuer=None)
    sans: list[x509.GeneralName] = [x509.DNSName(dns) for dns in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    leaf = issue(
        name(dns_names[0] if dns_names else "e2e-server"),
        issuer=ca,
        sans=sans,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    directory.mkdir(parents=True, exist_ok=True)
    return (
        write(directory / "ca.crt", ca.cert_pem()),
        write(directory / "tls.crt", leaf.cert_pem()),
        write(directory / "tls.key", leaf.key_pem(), private=True),
    )


def write_control_plane_pki(work: Path) -> Pair:
    """The CA, the apiserver's serving pair, the admin's client pair and the service-account key.

    Written into ``work`` under the names the component flags use; returns the CA.
    """
    ca = issue(name("sidecar-injector-e2e-ca"), issuer=None)
    write(work / "ca.crt", ca.cert_pem())
    write(work / "ca.key", ca.key_pem(), private=True)
    service_ip = next(ipaddress.IPv4Network(SERVICE_CLUSTER_IP_RANGE).hosts())
    serving = issue(
        name("kube-apiserver"),
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
    write(work / "apiserver.crt", serving.cert_pem() + ca.cert_pem())
    write(work / "apiserver.key", serving.key_pem(), private=True)
    admin = issue(
        name(ADMIN_USER, "system:masters"),
        issuer=ca,
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    write(work / "admin.crt", admin.cert_pem())
    write(work / "admin.key", admin.key_pem(), private=True)
    sa_key = ec.generate_private_key(ec.SECP256R1())
    write(
        work / "sa.key",
        sa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        private=True,
    )
    write(
        work / "sa.pub",
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return ca


def kubeconfig_file(
    path: Path, *, server: str, ca_file: Path, user: str, cert_pem: bytes, key_pem: bytes
) -> Path:
    """A kubeconfig for ``server`` as ``user`` with a client certificate (owner-only)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "e2e",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": b64(ca_file.read_bytes()),
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
    return write(path, yaml.safe_dump(config).encode(), private=True)
