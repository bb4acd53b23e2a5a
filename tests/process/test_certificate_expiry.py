"""The serving certificate's expiry: a gauge, a daily warning, /readyz, and ``certs --renew``.

The warning's timing is tested on a fake clock; everything else against a
real ``serve`` process over HTTPS, renewing its certificate with the real
``certs --renew`` command, as an operator would.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import subprocess
import time
from pathlib import Path

from cryptography import x509

from harness.server import CLI, Server, running_server
from harness.tls_client import SERVICE_HOSTNAME, https_get
from webhook.pki import certs

EXPIRY_GAUGE = "sidecar_injector_certificate_expiry_timestamp_seconds"


# --- the daily warning, on a fake clock ---------------------------------------------------


# --- a real server ----------------------------------------------------------------------


def not_after(cert_file: Path) -> datetime.datetime:
    return x509.load_pem_x509_certificate(cert_file.read_bytes()).not_valid_after_utc


def renew(cert_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "certs", "--renew", "--out", str(cert_dir), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def write_expired_leaf(cert_dir: Path) -> None:
    """An expired serving certificate under the directory's CA, as a forgotten install has."""
    ca = certs.load_ca(cert_dir / "ca.crt", cert_dir / "ca.key")
    dns, ips = certs.service_names()
    leaf = certs.make_serving_cert(
        ca,
        dns_names=dns,
        ips=ips,
        days=1,
        now=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3),
    )
    # Key first, as certs does: a reload in between keeps the old pair.
    (cert_dir / "tls.key").write_bytes(leaf.key_pem())
    (cert_dir / "tls.crt").write_bytes(leaf.cert_pem())


def unverified_get(port: int, path: str) -> tuple[int, bytes]:
    """GET over TLS without verifying: the only way to talk to a server with an expired cert."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname=SERVICE_HOSTNAME) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def wait_for(condition, *, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def expiry_gauge(server: Server) -> float:
    return server.metrics()[EXPIRY_GAUGE]


def test_metrics_show_the_served_certificates_expiry_and_follow_a_renewal(
    tmp_path: Path,
) -> None:
    cert_dir = tmp_path / "certs"
    subprocess.run([CLI, "certs", "--out", str(cert_dir), "--days", "10"], check=True)
    ca_before = (cert_dir / "ca.crt").read_bytes()
    with running_server(tmp_path / "serve", cert_dir=cert_dir) as server:
        assert expiry_gauge(server) == not_after(cert_dir / "tls.crt").timestamp()
        record = json.loads(server.wait_for_log("the serving certificate expires in"))
        assert record["level"] == "warning"
        assert record["logger"] == "webhook.certificates"
        days = float(record["message"].split("expires in ")[1].split(" days")[0])
        assert 9.9 <= days <= 10.0

        done = renew(cert_dir)
        assert done.returncode == 0, done.stderr
        assert "caBundle unchanged" in done.stderr
        renewed = not_after(cert_dir / "tls.crt").timestamp()
        # Each scrape is a new handshake, which reloads the renewed pair.
        wait_for(lambda: expiry_gauge(server) == renewed, what="the renewed expiry in /metrics")
        assert renewed - time.time() > 360 * 86400
    assert (cert_dir / "ca.crt").read_bytes() == ca_before


def test_readyz_fails_once_the_certificate_has_expired_and_recovers_after_renew(
    tmp_path: Path,
) -> None:
    cert_dir = tmp_path / "certs"
    subprocess.run([CLI, "certs", "--out", str(cert_dir)], check=True)
    with running_server(tmp_path / "serve", cert_dir=cert_dir) as server:
        write_expired_leaf(cert_dir)

        def expired_and_unready() -> bool:
            status, body = unverified_get(server.port, "/readyz")
            return status == 503 and b"serving certificate expired" in body

        wait_for(expired_and_unready, what="/readyz to fail on the expired certificate")
        server.wait_for_log("the serving certificate expired on")

        assert renew(cert_dir).returncode == 0
        wait_for(
            lambda: https_get(server.port, server.ca_file, "/readyz")[0] == 200,
            what="/readyz to recover with the renewed certificate",
        )
