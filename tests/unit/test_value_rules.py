"""Value rules where Kubernetes' own reading (the policy mode's CEL) decided the engine's.

Both modes judge every value alike (the contract): the engine's parsers take
what Kubernetes parses and refuse where Kubernetes would store a number other
than the one written (capped binary quantities, exponents read in 32 bits) or
would take longer to read than a request may (exponents beyond +-999);
CIDRs are refused with host bits set or in IPv4-mapped form, and written as
Go writes them. tests/e2e/test_policy_equivalence.py holds the CEL side to these.
"""

from __future__ import annotations

import pytest

from webhook.engine.config import InjectorConfig
from webhook.engine.quantity import QuantityError, parse_quantity
from webhook.engine.settings import SettingsError, resolve_settings
from webhook.engine.values import parse_cidr

P = "sidecar.mesh.io/"


@pytest.mark.parametrize("text", ["+-1", "1.5e3Ki", "1K", "1ki", "1e3Ki"])
def test_what_kubernetes_refuses_is_not_a_quantity(text: str) -> None:
    with pytest.raises(QuantityError, match="is not a Kubernetes quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("::1.2.3.4", "::102:304/128"),
        ("::0.1.0.0", "::1:0/128"),
        ("64:ff9b::1.2.3.4", "64:ff9b::102:304/128"),
    ],
)
def test_addresses_are_written_as_go_writes_them(text: str, canonical: str) -> None:
    # Not as glibc would (::1.2.3.4): the API server's CEL (policy mode) uses Go's netip.
    assert parse_cidr(text) == canonical


@pytest.mark.parametrize("text", [".", "-", "+", "Mi", "e3", ".Ki", "-.", "E", "m", "0e999"])
def test_quantities_without_digits_are_zero_as_kubernetes_reads_them(text: str) -> None:
    # Kubernetes parses these (as 0), so the policy mode, which asks Kubernetes'
    # own parser, takes them; the engine judges alike.
    assert parse_quantity(text) == 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("8Ei", "too large"),
        ("9007199254740991.9990234375Ki", "too large"),  # exactly 2^63-1, in Ki
        ("8191.9999999999999999Pi", "too large"),  # rounds up to 2^63-1 nano-units
        ("9007199254740991.999Ki", None),  # below 2^63-1
        ("9223372036854775807", None),  # 2^63-1 written in decimal is the largest quantity
        ("1e2147483647", "too large"),
        ("1e4294967296", "too large"),  # Kubernetes would read 1e0 (a 32-bit exponent)
        ("1e-999", None),  # rounds up to 1n
        ("1e-1000", "has an exponent beyond \\+-999"),
        ("1e-2147483647", "has an exponent beyond"),  # held the API server past its deadline
        ("0e1000", "has an exponent beyond"),
        ("0e999999999", "has an exponent beyond"),  # so did this one, comparing 0 with 0
    ],
)
def test_where_kubernetes_caps_wraps_or_labours_over_a_quantity_it_is_refused(
    text: str, problem: str | None
) -> None:
    if problem is None:
        assert parse_quantity(text) > 0
    else:
        with pytest.raises(QuantityError, match=problem):
            parse_quantity(text)


@pytest.mark.parametrize(
    ("text", "network"),
    [("10.0.0.1/8", "10.0.0.0/8"), ("10.1.2.3/8", "10.0.0.0/8"), ("FD00:0:0::1/8", "fd00::/8")],
)
def test_a_cidr_with_host_bits_is_refused_naming_its_network(text: str, network: str) -> None:
    with pytest.raises(ValueError, match=f"has host bits set \\(its network is {network}\\)"):
        parse_cidr(text)


@pytest.mark.parametrize(
    "text",
    [
        "::ffff:1.2.3.4",
        "0::ffff:1.2.3.4",
        "::ffff:ffff:ffff",
        "::ffff:0:0/96",
        "::ffff:10.0.0.0/104",
    ],
)
def test_ipv4_mapped_ipv6_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a CIDR"):
        parse_cidr(text)


def test_an_ipv4_mapped_xds_address_is_refused() -> None:
    with pytest.raises(SettingsError, match="invalid IPv6 address"):
        resolve_settings(
            InjectorConfig(),
            namespace_labels={},
            namespace_annotations={},
            pod_annotations={P + "xds-address": "[::ffff:10.0.0.1]:15010"},
        )
