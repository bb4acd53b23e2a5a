"""The certificates from ``certs`` as OpenSSL itself verifies them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from webhook.pki.certs import write_certs


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs") / "out"
    write_certs(out)
    return out


def test_openssl_verifies_the_chain_and_the_service_hostname(written: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl binary not installed")
    result = subprocess.run(
        [
            openssl, "verify", "-x509_strict", "-purpose", "sslserver",
            "-verify_hostname", "sidecar-injector.mesh-system.svc",
            "-CAfile", str(written / "ca.crt"), str(written / "tls.crt"),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": OK")
