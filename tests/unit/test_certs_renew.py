"""``certs --renew`` reads the Service it renews for from the current certificate."""

from __future__ import annotations

from pathlib import Path

from webhook.pki import certs


def test_the_service_is_read_from_the_svc_name_of_the_current_certificate(
    tmp_path: Path,
) -> None:
    ca = certs.make_ca()
    with_svc = tmp_path / "svc.crt"
    with_svc.write_bytes(
        certs.make_serving_cert(ca, dns_names=["web", "web.shop", "web.shop.svc"]).cert_pem()
    )
    without = tmp_path / "plain.crt"
    without.write_bytes(certs.make_serving_cert(ca, dns_names=["example.com"]).cert_pem())
    garbage = tmp_path / "garbage.crt"
    garbage.write_bytes(b"not a certificate")
    assert certs.served_service(with_svc) == ("web", "shop")
    assert certs.served_service(without) is None
    assert certs.served_service(garbage) is None
    assert certs.served_service(tmp_path / "missing.crt") is None
