"""The certificates ``sidecar-injector certs`` makes are ones kube-apiserver accepts.

Properties are read back from the written PEM files with ``cryptography``
and, where available, checked independently with the ``openssl`` binary.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from webhook.pki.certs import CertError, make_ca, make_serving_cert, service_names, write_certs

CONTRACT_DNS = [
    "sidecar-injector",
    "sidecar-injector.mesh-system",
    "sidecar-injector.mesh-system.svc",
    "sidecar-injector.mesh-system.svc.cluster.local",
    "localhost",
]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs") / "out"  # not yet existing: write_certs creates it
    write_certs(out)
    return out


def test_serving_cert_names_exactly_the_contract_sans(written: Path) -> None:
    san = _cert(written / "tls.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == CONTRACT_DNS
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_serving_cert_uses_a_p256_key_sha256_and_a_positive_random_serial(written: Path) -> None:
    leaf = _cert(written / "tls.crt")
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    assert leaf.serial_number > 0
    # random_serial_number gives ~159 bits; a counter or a small constant would not.
    assert leaf.serial_number.bit_length() > 64
    assert leaf.serial_number != _cert(written / "ca.crt").serial_number


def test_serving_cert_is_a_server_auth_leaf_not_a_ca(written: Path) -> None:
    ext = _cert(written / "tls.crt").extensions
    constraints = ext.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert not usage.key_encipherment  # only meaningful for RSA keys


def test_serving_cert_carries_key_identifiers_linking_it_to_the_ca(written: Path) -> None:
    ca, leaf = _cert(written / "ca.crt"), _cert(written / "tls.crt")
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    leaf_ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert leaf_ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())


def test_ca_is_a_critical_ca_that_signs_certificates_and_crls(written: Path) -> None:
    ext = _cert(written / "ca.crt").extensions
    constraints = ext.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign


def test_chain_verifies_for_the_service_name_with_cryptography(written: Path) -> None:
    from cryptography.x509.verification import PolicyBuilder, Store

    ca, leaf = _cert(written / "ca.crt"), _cert(written / "tls.crt")
    verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .build_server_verifier(x509.DNSName("sidecar-injector.mesh-system.svc"))
    )
    chain = verifier.verify(leaf, [])
    assert chain[-1] == ca


def test_validity_starts_a_little_in_the_past_and_lasts_the_requested_days(tmp_path: Path) -> None:
    before = datetime.datetime.now(datetime.UTC)
    write_certs(tmp_path, days=30)
    leaf = _cert(tmp_path / "tls.crt")
    assert before - datetime.timedelta(minutes=10) < leaf.not_valid_before_utc < before
    lifetime = leaf.not_valid_after_utc - before
    assert datetime.timedelta(days=30) - datetime.timedelta(minutes=1) < lifetime
    assert lifetime <= datetime.timedelta(days=30, minutes=1)
    # The CA outlives many renewals of the leaf.
    assert _cert(tmp_path / "ca.crt").not_valid_after_utc > leaf.not_valid_after_utc


def test_keys_are_private_and_certificates_world_readable(written: Path) -> None:
    modes = {name: stat.S_IMODE((written / name).stat().st_mode) for name in os.listdir(written)}
    assert modes == {"ca.crt": 0o644, "ca.key": 0o600, "tls.crt": 0o644, "tls.key": 0o600}


def test_modes_are_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_certs(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "tls.crt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "tls.key").stat().st_mode) == 0o600


def test_written_keys_belong_to_their_certificates(written: Path) -> None:
    for cert, key in (("ca.crt", "ca.key"), ("tls.crt", "tls.key")):
        public = _key(written / key).public_key()
        assert public == _cert(written / cert).public_key()


def test_a_second_run_reuses_the_ca_and_renews_the_leaf(tmp_path: Path) -> None:
    first = write_certs(tmp_path)
    ca_bytes, ca_key_bytes = (tmp_path / "ca.crt").read_bytes(), (tmp_path / "ca.key").read_bytes()
    leaf_bytes, leaf_key_bytes = (
        (tmp_path / "tls.crt").read_bytes(),
        (tmp_path / "tls.key").read_bytes(),
    )

    second = write_certs(tmp_path)

    assert first.ca_reused is False
    assert second.ca_reused is True
    assert (tmp_path / "ca.crt").read_bytes() == ca_bytes
    assert (tmp_path / "ca.key").read_bytes() == ca_key_bytes
    assert (tmp_path / "tls.crt").read_bytes() != leaf_bytes
    assert (tmp_path / "tls.key").read_bytes() != leaf_key_bytes  # a renewal rotates the key
    new_leaf = _cert(tmp_path / "tls.crt")
    new_leaf.verify_directly_issued_by(_cert(tmp_path / "ca.crt"))


def test_leftover_serving_files_without_a_ca_get_a_new_ca(tmp_path: Path) -> None:
    write_certs(tmp_path)
    old_ca = (tmp_path / "ca.crt").read_bytes()
    (tmp_path / "ca.crt").unlink()
    (tmp_path / "ca.key").unlink()

    files = write_certs(tmp_path)

    assert files.ca_reused is False
    assert (tmp_path / "ca.crt").read_bytes() != old_ca
    _cert(tmp_path / "tls.crt").verify_directly_issued_by(_cert(tmp_path / "ca.crt"))


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    write_certs(tmp_path)
    write_certs(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]


def test_service_and_namespace_flow_into_the_sans_and_subject(tmp_path: Path) -> None:
    write_certs(tmp_path, service="hook", namespace="team-a")
    leaf = _cert(tmp_path / "tls.crt")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName)[:4] == [
        "hook", "hook.team-a", "hook.team-a.svc", "hook.team-a.svc.cluster.local",
    ]  # fmt: skip
    assert leaf.subject.rfc4514_string() == "CN=hook.team-a.svc"


@pytest.mark.parametrize("service", ["Bad_Name", "", "a" * 64, "dot.ted"])
def test_a_service_name_that_is_not_a_dns_label_is_refused(tmp_path: Path, service: str) -> None:
    with pytest.raises(CertError, match="not a DNS label"):
        write_certs(tmp_path, service=service)
    assert not (tmp_path / "tls.key").exists()


def test_a_corrupt_existing_ca_is_an_error_naming_the_file(tmp_path: Path) -> None:
    write_certs(tmp_path)
    (tmp_path / "ca.crt").write_text("garbage\n")
    with pytest.raises(CertError) as caught:
        write_certs(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "ca.crt") in message
    assert "\n" not in message


def test_a_ca_key_that_does_not_match_the_ca_cert_is_an_error(tmp_path: Path) -> None:
    write_certs(tmp_path)
    other = tmp_path / "other"
    write_certs(other)
    (tmp_path / "ca.key").write_bytes((other / "ca.key").read_bytes())
    leaf_before = (tmp_path / "tls.crt").read_bytes()
    with pytest.raises(CertError, match=r"ca\.key: does not match"):
        write_certs(tmp_path)
    assert (tmp_path / "tls.crt").read_bytes() == leaf_before  # nothing half-done


def test_half_a_ca_is_an_error_rather_than_a_silent_new_ca(tmp_path: Path) -> None:
    write_certs(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(CertError, match=r"ca\.key: missing next to"):
        write_certs(tmp_path)


def test_a_leaf_reused_as_ca_is_refused(tmp_path: Path) -> None:
    write_certs(tmp_path)
    os.replace(tmp_path / "tls.crt", tmp_path / "ca.crt")
    os.replace(tmp_path / "tls.key", tmp_path / "ca.key")
    with pytest.raises(CertError, match="not a CA certificate"):
        write_certs(tmp_path)


def test_a_failed_write_names_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "tls.key").mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(CertError, match=r"tls\.key: cannot write"):
        write_certs(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["ca.crt", "ca.key", "tls.key"]


def test_an_out_path_that_is_a_file_is_an_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "certs"
    blocker.write_text("not a directory")
    with pytest.raises(CertError, match="certs"):
        write_certs(blocker)


def test_a_leaf_never_outlives_its_ca() -> None:
    ca = make_ca(days=10)
    dns, ips = service_names()
    leaf = make_serving_cert(ca, dns_names=dns, ips=ips, days=365)
    assert leaf.cert.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_an_expired_ca_is_an_error() -> None:
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    ca = make_ca(days=10, now=long_ago)
    with pytest.raises(CertError, match="CA expired"):
        make_serving_cert(ca, dns_names=["x"], days=1)
