"""A TLS client that checks the webhook the way kube-apiserver does.

kube-apiserver dials the Service's cluster IP but verifies the serving
certificate for ``<service>.<namespace>.svc`` against the webhook's
``caBundle``. Tests do the same against 127.0.0.1: a test that verified
"127.0.0.1" or skipped verification would pass with a certificate the
cluster rejects.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from pathlib import Path

from cryptography import x509

from webhook.pki import served_cert

SERVICE_HOSTNAME = "sidecar-injector.mesh-system.svc"


def client_context(
    ca_file: Path,
    *,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    """A verifying client context trusting only ``ca_file`` (the caBundle).

    ``VERIFY_X509_STRICT`` makes OpenSSL as picky about certificate structure
    as Go's crypto/tls (e.g. it wants the authority key identifier).
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if minimum is not None:
        context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


def connect(
    port: int,
    ca_file: Path,
    *,
    server_hostname: str = SERVICE_HOSTNAME,
    host: str = "127.0.0.1",
    context: ssl.SSLContext | None = None,
    timeout: float = 5.0,
) -> ssl.SSLSocket:
    """A handshaken, verified TLS socket to ``host:port``; the caller closes it."""
    context = context or client_context(ca_file)
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        return context.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def peer_fingerprint(sock: ssl.SSLSocket) -> str:
    """SHA-256 (hex) of the certificate the server presented; see :func:`file_fingerprint`."""
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def file_fingerprint(cert_file: Path) -> str:
    """The :func:`peer_fingerprint` a server shows once it serves ``cert_file`` (its first cert)."""
    return served_cert.fingerprint(x509.load_pem_x509_certificate(cert_file.read_bytes()))


def https_get(
    port: int,
    ca_file: Path,
    path: str = "/",
    *,
    server_hostname: str = SERVICE_HOSTNAME,
    timeout: float = 5.0,
) -> tuple[int, bytes, str]:
    """One HTTP/1.1 GET over a fresh verified connection: (status, body, cert fingerprint).

    A fresh connection per call is the point: each one is a new handshake,
    so it sees whatever certificate the server serves at that moment.
    """
    with connect(port, ca_file, server_hostname=server_hostname, timeout=timeout) as sock:
        fingerprint = peer_fingerprint(sock)
        request = f"GET {path} HTTP/1.1\r\nHost: {server_hostname}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode("ascii"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body, fingerprint
