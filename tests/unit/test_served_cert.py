"""What an endpoint serves, judged against a caBundle as kube-apiserver judges it.

Real TLS handshakes with a local server holding each kind of wrong
certificate: another CA's, another Service's, an expired one, one that names
the Service only in its Common Name (Go ignores it), and no TLS at all.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from webhook.pki import certs, served_cert

NAME = "sidecar-injector.mesh-system.svc"
DNS, IPS = certs.service_names()


@contextlib.contextmanager
def tls_server(pair: certs.KeyPair | None, *, chain: bytes = b"") -> Iterator[int]:
    """Serve handshakes with ``pair`` (plain TCP that hangs up when None); yield the port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    context = None
    if pair is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert.write_bytes(pair.cert_pem() + chain)
            key.write_bytes(pair.key_pem())
            context.load_cert_chain(cert, key)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                if context is None:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                    continue
                conn.settimeout(5)
                with (
                    contextlib.suppress(OSError),
                    context.wrap_socket(conn, server_side=True) as tls,
                ):
                    tls.recv(1)  # until the client hangs up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


def opener(port: int) -> served_cert.Opener:
    return lambda: socket.create_connection(("127.0.0.1", port), 5)


CA = certs.make_ca()
GOOD = certs.make_serving_cert(CA, dns_names=DNS, ips=IPS)


def probe(pair: certs.KeyPair | None, bundle: bytes, **kwargs: bytes) -> served_cert.Served:
    with tls_server(pair, **kwargs) as port:
        return served_cert.probe(opener(port), server_name=NAME, bundle=bundle)


def explain(served: served_cert.Served, bundle: bytes) -> str:
    return served_cert.explain(
        served, server_name=NAME, bundle=served_cert.bundle_certificates(bundle)
    )


def test_the_right_bundle_verifies_the_served_certificate_for_the_service_name() -> None:
    served = probe(GOOD, CA.cert_pem())
    assert served.verified
    assert served.signed_by_bundle
    assert served.leaf is not None
    assert served_cert.fingerprint(served.leaf) == served_cert.fingerprint(GOOD.cert)


def test_a_bundle_with_several_cas_verifies_a_certificate_of_any_of_them() -> None:
    # What a CA rotation relies on: old and new CA in caBundle at once.
    new = certs.make_ca()
    bundle = CA.cert_pem() + new.cert_pem()
    assert probe(GOOD, bundle).verified
    assert probe(certs.make_serving_cert(new, dns_names=DNS), bundle).verified


def test_another_cas_certificate_is_refused_and_the_issuer_named() -> None:
    other = certs.make_ca(common_name="other CA")
    served = probe(certs.make_serving_cert(other, dns_names=DNS), CA.cert_pem())
    assert not served.verified
    assert not served.signed_by_bundle
    assert served.leaf is not None  # fetched again without verification, to explain
    why = explain(served, CA.cert_pem())
    assert "does not verify the served certificate issued by other CA" in why
    assert served_cert.common_name(CA.cert.subject) in why


def test_a_certificate_for_another_service_is_refused_naming_its_names() -> None:
    leaf = certs.make_serving_cert(CA, dns_names=["web", "web.shop.svc"])
    served = probe(leaf, CA.cert_pem())
    assert not served.signed_by_bundle
    assert served.verify_code == served_cert.HOSTNAME_MISMATCH
    assert (
        explain(served, CA.cert_pem())
        == f"the served certificate is for web, web.shop.svc, not {NAME}"
    )


def test_a_name_only_in_the_common_name_does_not_count() -> None:
    # Go's crypto/x509 ignores the CN; so must the check, or it would pass
    # a certificate the API server refuses.
    served = probe(_leaf(CA, dns=None, cn=NAME), CA.cert_pem())
    assert not served.signed_by_bundle
    assert served.verify_code == served_cert.HOSTNAME_MISMATCH


def test_an_expired_certificate_is_still_signed_by_the_bundle_but_not_verified() -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    leaf = certs.make_serving_cert(CA, dns_names=DNS, days=2, now=past)
    served = probe(leaf, CA.cert_pem())
    assert not served.verified
    assert served.signed_by_bundle  # the bundle is right; the expiry check says the rest
    assert served.verify_code == served_cert.CERT_HAS_EXPIRED
    assert served.leaf is not None
    assert served_cert.days_left(served.leaf) < -7
    assert "expired on" in explain(served, CA.cert_pem())


def _leaf(ca: certs.KeyPair, *, dns: list[str] | None, cn: str, days: int = 30) -> certs.KeyPair:
    """A leaf built by hand, for shapes ``certs`` refuses to make."""
    key = certs._new_key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns]), critical=False
        )
    return certs.KeyPair(builder.sign(ca.key, hashes.SHA256()), key)


def test_an_expired_ca_is_not_mistaken_for_an_expired_leaf() -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    old_ca = certs.make_ca(days=2, now=past)
    # A leaf still valid itself, under a CA that is not (certs never makes one).
    served = probe(_leaf(old_ca, dns=DNS, cn=NAME), old_ca.cert_pem())
    assert served.verify_code == served_cert.CERT_HAS_EXPIRED
    assert not served.signed_by_bundle
    assert "a CA in the chain has expired" in explain(served, old_ca.cert_pem())


def test_a_server_that_does_not_speak_tls_is_an_error_not_a_verdict() -> None:
    served = probe(None, CA.cert_pem())
    assert served.error
    assert served.leaf is None
    assert not served.signed_by_bundle


def test_a_port_nobody_listens_on_is_an_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    served = served_cert.probe(opener(port), server_name=NAME, bundle=CA.cert_pem())
    assert "refused" in served.error.lower()


@pytest.mark.parametrize("bundle", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nxx\n"])
def test_a_bundle_without_certificates_is_refused_before_dialling(bundle: bytes) -> None:
    def never() -> socket.socket:
        raise AssertionError("dialled")

    with pytest.raises(served_cert.BundleError, match="holds no PEM certificate"):
        served_cert.probe(never, server_name=NAME, bundle=bundle)
