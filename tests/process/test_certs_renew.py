"""``sidecar-injector certs --renew``: a new serving certificate under the CA the cluster trusts."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography import x509

from harness.server import CLI


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "certs", *args], capture_output=True, text=True, check=False)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def dns_names(path: Path) -> list[str]:
    sans = load(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(sans.get_values_for_type(x509.DNSName))


def test_renew_replaces_the_serving_pair_and_keeps_the_ca(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert run("--out", str(out)).returncode == 0
    ca_cert, ca_key = (out / "ca.crt").read_bytes(), (out / "ca.key").read_bytes()
    old_cert, old_key = (out / "tls.crt").read_bytes(), (out / "tls.key").read_bytes()

    done = run("--renew", "--out", str(out), "--days", "30")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "under the existing CA (caBundle unchanged)" in done.stderr
    assert (out / "ca.crt").read_bytes() == ca_cert
    assert (out / "ca.key").read_bytes() == ca_key
    assert (out / "tls.crt").read_bytes() != old_cert
    assert (out / "tls.key").read_bytes() != old_key
    leaf, ca = load(out / "tls.crt"), load(out / "ca.crt")
    leaf.verify_directly_issued_by(ca)
    assert 29 <= (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days <= 30
    assert (out / "tls.key").stat().st_mode & 0o777 == 0o600


def test_renew_keeps_the_service_the_certificate_was_for(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert (
        run("--out", str(out), "--service", "injector", "--namespace", "platform").returncode == 0
    )
    done = run("--renew", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "injector.platform.svc" in dns_names(out / "tls.crt")
    assert "for injector.platform " in done.stderr


def test_renew_with_names_given_uses_them(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert run("--out", str(out)).returncode == 0
    assert run("--renew", "--out", str(out), "--namespace", "mesh").returncode == 0
    assert "sidecar-injector.mesh.svc" in dns_names(out / "tls.crt")


def test_renew_without_a_ca_refuses_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    done = run("--renew", "--out", str(out))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "no CA to reuse (ca.crt and ca.key missing)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_renew_with_half_a_ca_refuses(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert run("--out", str(out)).returncode == 0
    (out / "ca.key").unlink()
    before = (out / "tls.crt").read_bytes()
    done = run("--renew", "--out", str(out))
    assert done.returncode == 1
    assert "no CA to reuse (ca.key missing)" in done.stderr
    assert (out / "tls.crt").read_bytes() == before
