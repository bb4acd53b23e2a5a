"""Settings: every key, the precedence, the label separator, provenance, refusals."""

from __future__ import annotations

import pytest

from webhook.engine.config import InjectorConfig
from webhook.engine.quantity import QuantityError, parse_quantity
from webhook.engine.settings import (
    MAX_UNKNOWN_KEY_WARNINGS,
    SETTING_KEYS,
    SETTINGS_CACHE,
    SettingsError,
    Source,
    resolve_settings,
)
from webhook.engine.values import (
    MAX_CIDR_LIST_CHARS,
    MAX_CIDRS,
    MAX_PORT_LIST_CHARS,
    MAX_PORTS,
    MAX_SCALAR_CHARS,
    parse_cidr,
)
from webhook.manifests.config_file import parse_config

P = "sidecar.mesh.io/"


def resolve(
    labels: dict[str, str] | None = None,
    ns_annotations: dict[str, str] | None = None,
    pod: dict[str, str] | None = None,
    config: InjectorConfig | None = None,
):
    return resolve_settings(
        config or InjectorConfig(),
        namespace_labels=labels or {},
        namespace_annotations=ns_annotations or {},
        pod_annotations=pod or {},
    )


def test_every_contract_key_is_a_setting() -> None:
    expected = {
        "proxy-version", "proxy-cpu-request", "proxy-cpu-limit", "proxy-memory-request",
        "proxy-memory-limit", "log-level", "include-inbound-ports", "exclude-inbound-ports",
        "exclude-outbound-ports", "include-outbound-cidrs", "exclude-outbound-cidrs",
        "native-sidecar", "hold-application", "xds-address",
    }  # fmt: skip
    assert {key.removeprefix(P) for key in SETTING_KEYS} == expected


def test_defaults_come_from_the_built_in_config() -> None:
    settings = resolve()
    assert settings.log_level == "warning"
    assert settings.include_inbound_ports == "*"
    assert settings.include_outbound_cidrs == "*"
    assert settings.exclude_inbound_ports == ()
    assert settings.native_sidecar is True
    assert settings.xds_address is None
    assert all(item.source is Source.BUILT_IN for item in settings.provenance.values())


def test_values_set_in_the_config_file_are_attributed_to_it() -> None:
    config = parse_config("proxy:\n  version: v9.9.9\n  resources:\n    cpuRequest: 1\n")
    settings = resolve(config=config)
    assert settings.proxy_version == "v9.9.9"
    assert settings.provenance[P + "proxy-version"].source is Source.CONFIG
    assert settings.provenance[P + "proxy-cpu-request"].source is Source.CONFIG
    assert settings.provenance[P + "proxy-memory-request"].source is Source.BUILT_IN
    assert settings.provenance[P + "log-level"].source is Source.BUILT_IN


@pytest.mark.parametrize(
    ("labels", "ns_annotations", "pod", "winner", "source"),
    [
        ({P + "log-level": "info"}, {}, {}, "info", Source.NAMESPACE_LABEL),
        ({P + "log-level": "info"}, {P + "log-level": "debug"}, {}, "debug",
         Source.NAMESPACE_ANNOTATION),
        ({P + "log-level": "info"}, {P + "log-level": "debug"}, {P + "log-level": "trace"},
         "trace", Source.POD_ANNOTATION),
        ({}, {}, {P + "log-level": "error"}, "error", Source.POD_ANNOTATION),
    ],
)  # fmt: skip
def test_precedence_is_pod_annotation_then_namespace_annotation_then_label(
    labels: dict[str, str],
    ns_annotations: dict[str, str],
    pod: dict[str, str],
    winner: str,
    source: Source,
) -> None:
    settings = resolve(labels, ns_annotations, pod)
    assert settings.log_level == winner
    assert settings.provenance[P + "log-level"].source is source


def test_labels_separate_list_items_with_underscores() -> None:
    settings = resolve({P + "exclude-inbound-ports": "9091_9090_9090"})
    assert settings.exclude_inbound_ports == (9090, 9091)
    assert settings.provenance[P + "exclude-inbound-ports"].value == "9090,9091"


def test_annotations_separate_list_items_with_commas() -> None:
    settings = resolve(pod={P + "exclude-outbound-ports": "5432, 6379"})
    assert settings.exclude_outbound_ports == (5432, 6379)


def test_a_comma_list_in_a_label_is_refused() -> None:
    # A label value cannot contain commas, so this can only be a mistake.
    with pytest.raises(SettingsError, match="namespace label"):
        resolve({P + "exclude-inbound-ports": "80,81"})


def test_cidr_lists_are_read_from_annotations_and_ignored_with_a_warning_in_labels() -> None:
    settings = resolve(
        {P + "exclude-outbound-cidrs": "10.0.0.0"},
        {P + "include-outbound-cidrs": "10.0.0.0/8,192.168.1.7"},
    )
    assert settings.include_outbound_cidrs == ("10.0.0.0/8", "192.168.1.7/32")
    assert settings.exclude_outbound_cidrs == ()
    assert any("CIDR lists can only be annotations" in w for w in settings.warnings)


def test_star_means_all_ports_and_empty_means_none() -> None:
    assert resolve(pod={P + "include-inbound-ports": "*"}).include_inbound_ports == "*"
    assert resolve(pod={P + "include-inbound-ports": ""}).include_inbound_ports == ()


def test_an_empty_resource_value_unsets_it() -> None:
    settings = resolve(pod={P + "proxy-memory-limit": ""})
    assert settings.proxy_memory_limit is None


def test_booleans_and_the_xds_address_parse() -> None:
    settings = resolve(
        {P + "native-sidecar": "false"},
        {P + "hold-application": "True", P + "xds-address": "xds.mesh-system.svc:15010"},
    )
    assert settings.native_sidecar is False
    assert settings.hold_application is True
    assert settings.xds_address == "xds.mesh-system.svc:15010"


@pytest.mark.parametrize(
    ("where", "key", "value", "message"),
    [
        ("pod", "proxy-cpu-request", "lots", "pod annotation sidecar.mesh.io/proxy-cpu-request='lots'"),
        ("label", "exclude-inbound-ports", "80_70000", "namespace label sidecar.mesh.io/exclude-inbound-ports='80_70000'"),
        ("ns", "exclude-outbound-cidrs", "10.0.0.0/33", "namespace annotation sidecar.mesh.io/exclude-outbound-cidrs='10.0.0.0/33'"),
        ("pod", "log-level", "verbose", "is not an Envoy log level"),
        ("pod", "native-sidecar", "yes", "is not true or false"),
        ("pod", "xds-address", "xds:port", "is not a port number"),
        ("pod", "xds-address", "no-port", "is not host:port"),
        ("pod", "proxy-version", "v1 beta", "is not an image tag"),
        ("pod", "include-inbound-ports", "80,,81", "empty item"),
        ("label", "proxy-memory-request", "-1Mi", "negative"),
    ],
)  # fmt: skip
def test_invalid_values_are_refused_naming_key_source_and_value(
    where: str, key: str, value: str, message: str
) -> None:
    kwargs = {"label": {"labels": {P + key: value}}, "ns": {"ns_annotations": {P + key: value}},
              "pod": {"pod": {P + key: value}}}[where]  # fmt: skip
    with pytest.raises(SettingsError) as caught:
        resolve(**kwargs)
    assert message in str(caught.value)
    assert P + key in str(caught.value)


def test_an_invalid_value_that_is_overridden_does_not_refuse() -> None:
    settings = resolve({P + "log-level": "loud"}, pod={P + "log-level": "info"})
    assert settings.log_level == "info"


def test_a_request_above_its_limit_blames_the_value_set_closest_to_the_pod() -> None:
    with pytest.raises(SettingsError, match=r"pod annotation sidecar\.mesh\.io/proxy-cpu-limit"):
        resolve(pod={P + "proxy-cpu-limit": "50m"})
    with pytest.raises(
        SettingsError, match=r"namespace label sidecar\.mesh\.io/proxy-memory-request"
    ):
        resolve({P + "proxy-memory-request": "2Gi"})


def test_unknown_keys_under_the_prefix_are_warnings_not_refusals() -> None:
    # inject, status and rev are ours without being settings: no warning for them.
    settings = resolve(
        {P + "proxy-cpu": "1", P + "rev": "canary"},
        pod={P + "inject": "true", P + "status": "{}", P + "rev": "canary"},
    )
    assert settings.warnings == (
        "namespace label sidecar.mesh.io/proxy-cpu is not a known setting and is ignored",
    )


# --- hostile values are refused cheaply, with short messages ----------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("exclude-inbound-ports", "\u0668\u0660"),  # Arabic-Indic "80": int() takes it
        ("exclude-inbound-ports", "\uff18\uff10"),  # full-width "80"
        ("exclude-outbound-ports", "443,\u0665\u0664\u0663\u0662"),
        ("include-inbound-ports", "\u00b2"),  # superscript two: str.isdigit() says yes
        ("xds-address", "xds.mesh-system.svc:\uff11\uff15\uff10\uff11\uff10"),
        ("exclude-outbound-cidrs", "\u0661\u0660.0.0.0/8"),
        ("exclude-outbound-cidrs", "10.0.0.0/\u0668"),
    ],
)
def test_ports_and_addresses_take_ascii_digits_only(key: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        resolve(pod={P + key: value})
    assert P + key in str(caught.value)
    assert "non-ASCII" in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("xds-address", "xds.mesh-system.svc:15010\n"),
        ("xds-address", "xds\n.mesh-system.svc:15010"),
        ("log-level", "info\n"),
        ("log-level", "\tinfo"),
        ("proxy-cpu-request", "100m\n"),
        ("native-sidecar", "true\r"),
        ("exclude-inbound-ports", "80\x00"),
        ("exclude-outbound-cidrs", "10.0.0.0/8,\x7f"),
        ("proxy-version", "v1\x1b[31m"),
    ],
)
def test_control_characters_are_refused_in_every_setting(key: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        resolve(ns_annotations={P + key: value})
    message = str(caught.value)
    assert message.startswith(f"namespace annotation {P}{key}=")
    assert "control character" in message
    assert "\n" not in message
    assert "\r" not in message


@pytest.mark.parametrize(
    "address",
    [
        "xds.mesh-system.svc:15010",
        "XDS.example.com:1",
        "10.96.0.10:15010",
        "[fd00::10]:15010",
        "[::1]:65535",
        f"{'a' * 63}.{'b' * 63}.{'c' * 63}.{'d' * 61}:15010",  # 253 characters
    ],
)
def test_valid_xds_addresses(address: str) -> None:
    assert resolve(pod={P + "xds-address": address}).xds_address == address


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("999.1.1.1:15010", "invalid IPv4 address"),
        ("10.0.0.010:15010", "invalid IPv4 address"),
        ("1.2.3:15010", "invalid IPv4 address"),
        ("[fe80::1%eth0]:15010", "invalid IPv6 address"),
        ("[fd00::g]:15010", "invalid IPv6 address"),
        ("fd00::1:15010", "invalid host name"),  # IPv6 without brackets
        ("-xds.svc:15010", "invalid host name"),
        ("xds..svc:15010", "invalid host name"),
        ("xds_svc:15010", "invalid host name"),
        ("xds svc:15010", "invalid host name"),
        (f"{'a' * 64}.svc:15010", "invalid host name"),  # a label over 63
        (f"{'a' * 63}.{'b' * 63}.{'c' * 63}.{'d' * 63}:1", "invalid host name"),  # 255
        ("xds.svc:0", "is not a port number"),
        ("xds.svc:65536", "is not a port number"),
        ("xds.svc:+80", "is not a port number"),
        ("xds.svc:", "is not a port number"),
        (":15010", "is not host:port"),
    ],
)
def test_the_xds_address_is_checked_strictly(address: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        resolve(pod={P + "xds-address": address})


@pytest.mark.parametrize(
    ("key", "count"),
    [
        ("exclude-inbound-ports", MAX_PORTS),
        ("exclude-outbound-ports", MAX_PORTS),
        ("include-inbound-ports", MAX_PORTS),
    ],
)
def test_port_lists_have_a_maximum_length(key: str, count: int) -> None:
    ports = [str(1000 + i) for i in range(count + 1)]
    settings = resolve(pod={P + key: ",".join(ports[:count])})
    assert len(getattr(settings, key.replace("-", "_"))) == count
    with pytest.raises(SettingsError, match=f"has {count + 1} items; at most {count}"):
        resolve(pod={P + key: ",".join(ports)})


@pytest.mark.parametrize("key", ["exclude-outbound-cidrs", "include-outbound-cidrs"])
def test_cidr_lists_have_a_maximum_length(key: str) -> None:
    cidrs = [f"10.{i // 256}.{i % 256}.0/24" for i in range(MAX_CIDRS + 1)]
    settings = resolve(pod={P + key: ",".join(cidrs[:MAX_CIDRS])})
    assert len(getattr(settings, key.replace("-", "_"))) == MAX_CIDRS
    with pytest.raises(SettingsError, match=f"at most {MAX_CIDRS}"):
        resolve(pod={P + key: ",".join(cidrs)})


@pytest.mark.parametrize(
    ("key", "limit"),
    [
        ("exclude-outbound-cidrs", MAX_CIDR_LIST_CHARS),
        ("include-outbound-cidrs", MAX_CIDR_LIST_CHARS),
        ("exclude-inbound-ports", MAX_PORT_LIST_CHARS),
        ("proxy-cpu-request", MAX_SCALAR_CHARS),
        ("xds-address", MAX_SCALAR_CHARS),
        ("proxy-version", MAX_SCALAR_CHARS),
    ],
)
def test_an_oversized_value_is_refused_before_it_is_parsed_or_cached(key: str, limit: int) -> None:
    # A control character first: were the value parsed, that would be the
    # complaint. The length is what is reported, so it was checked first.
    huge = "\x00" + "10.0.0.0/8," * 290_000  # 3.2 MB: a list the size of a hostile annotation
    entries = SETTINGS_CACHE.entries
    with pytest.raises(SettingsError) as caught:
        resolve(ns_annotations={P + key: huge})
    message = str(caught.value)
    assert f"it is longer than {limit} characters" in message
    assert message.startswith(f"namespace annotation {P}{key}=")
    assert f"({len(huge)} characters)" in message
    assert len(message) < 250
    assert SETTINGS_CACHE.entries == entries


def test_an_oversized_value_that_is_overridden_does_not_refuse() -> None:
    huge = "10.0.0.0/8," * 100_000
    settings = resolve(
        ns_annotations={P + "exclude-outbound-cidrs": huge},
        pod={P + "exclude-outbound-cidrs": "10.0.0.0/8"},
    )
    assert settings.exclude_outbound_cidrs == ("10.0.0.0/8",)


def test_messages_quote_long_values_and_items_shortened() -> None:
    item = "x" * 5000
    with pytest.raises(SettingsError) as caught:
        resolve(pod={P + "exclude-outbound-cidrs": f"10.0.0.0/8,{item}"})
    message = str(caught.value)
    assert len(message) < 300
    assert "(5011 characters)" in message  # the value
    assert "(5000 characters)" in message  # the item


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("100m", True),
        ("1.5Gi", True),
        ("250n", True),  # nano and micro are Kubernetes suffixes too
        ("5u", True),
        ("2e3", True),
        ("1E-3", True),
        ("1e-999", True),  # rounded up to 1n, as Kubernetes does
        ("9223372036854775807", True),  # 2^63-1, the largest quantity
        ("9.223372036854775807E", True),
        ("7Ei", True),
        ("9223372036854775807000m", True),
        ("9223372036854775808", False),
        ("9223372036854775807001m", False),
        ("8Ei", False),  # 2^63
        ("10E", False),
        ("1e19", False),
        ("1e1000000", False),
        ("9e2147483647", False),
        ("1E999999999", False),
        ("1e4294967296", False),  # Kubernetes' int32 cast would read this as 1
        ("1e99999999999999999999999999", False),
        ("0." + "0" * 200 + "1", True),
        ("1" + "0" * 200, False),
    ],
)
def test_quantities_of_any_magnitude_are_judged(value: str, accepted: bool) -> None:
    key = P + "proxy-cpu-request"  # no limit by default, so only the value is judged
    if accepted:
        assert resolve(pod={key: value}).proxy_cpu_request == value
    else:
        with pytest.raises(SettingsError, match="too large") as caught:
            resolve(pod={key: value})
        assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    ("text", "nano"),
    [
        ("0", 0),
        ("1", 10**9),
        ("100m", 10**8),
        ("1.5", 15 * 10**8),
        ("1Ki", 1024 * 10**9),
        ("1.5Gi", 3 * 2**29 * 10**9),
        ("0.1n", 1),  # below a nano-unit: rounded up
        ("1e-999", 1),
        ("1.", 10**9),
        (".5", 5 * 10**8),
        ("+2", 2 * 10**9),
        ("-2", -2 * 10**9),
        ("0e999", 0),
        ("9223372036854775807", (2**63 - 1) * 10**9),
    ],
)
def test_quantity_values_follow_kubernetes(text: str, nano: int) -> None:
    assert parse_quantity(text) == nano


@pytest.mark.parametrize("text", ["", "1.2.3", "1Kb", "1 Mi", "1e", "1e+", "e", "1\n", "1Ee3"])
def test_malformed_quantities_are_errors_not_crashes(text: str) -> None:
    with pytest.raises(QuantityError, match="is not a Kubernetes quantity"):
        parse_quantity(text)


def test_requests_and_limits_compare_at_any_magnitude() -> None:
    with pytest.raises(SettingsError, match="proxy-cpu-limit"):
        resolve(pod={P + "proxy-cpu-request": "9223372036854775807", P + "proxy-cpu-limit": "1"})
    settings = resolve(pod={P + "proxy-cpu-request": "1e-999", P + "proxy-cpu-limit": "1n"})
    assert settings.proxy_cpu_limit == "1n"


def test_unknown_key_warnings_are_bounded() -> None:
    pod = {f"{P}unknown-{i}": "1" for i in range(5000)}
    warnings = resolve(pod=pod).warnings
    assert len(warnings) == MAX_UNKNOWN_KEY_WARNINGS + 1
    assert (
        warnings[-1] == f"{5000 - MAX_UNKNOWN_KEY_WARNINGS} more unknown keys under {P} are ignored"
    )


def test_an_unknown_key_is_shown_shortened() -> None:
    (warning,) = resolve(pod={P + "x" * 10_000: "1"}).warnings
    assert len(warning) < 250


# --- include-outbound-cidrs warnings per family -----------------------------------------


@pytest.mark.parametrize(
    ("value", "families"),
    [
        ("*", []),
        ("10.0.0.0/8,fd00::/8", []),
        ("10.0.0.0/8", [6]),
        ("fd00::/8", [4]),
        ("", [4, 6]),
    ],
)
def test_an_include_list_without_a_family_warns_that_it_is_not_intercepted(
    value: str, families: list[int]
) -> None:
    warnings = resolve(ns_annotations={P + "include-outbound-cidrs": value}).warnings
    assert list(warnings) == [
        f"namespace annotation {P}include-outbound-cidrs names no IPv{family} range: "
        f"the pod's outbound IPv{family} traffic is not intercepted"
        for family in families
    ]


def test_with_ipv6_off_only_ipv4_is_warned_about_and_ipv6_ranges_are_said_to_be_ignored() -> None:
    config = InjectorConfig(ipv6=False)
    assert resolve(pod={P + "include-outbound-cidrs": "10.0.0.0/8"}, config=config).warnings == ()
    warnings = resolve(
        pod={P + "include-outbound-cidrs": "fd00::/8", P + "exclude-outbound-cidrs": "fd01::/16"},
        config=config,
    ).warnings
    assert warnings[0].endswith(
        "names no IPv4 range: the pod's outbound IPv4 traffic is not intercepted"
    )
    assert "include-outbound-cidrs has IPv6 ranges, which are ignored" in warnings[1]
    assert "exclude-outbound-cidrs has IPv6 ranges, which are ignored" in warnings[2]


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("192.168.1.7", "192.168.1.7/32"),
        ("FD00:0::/8", "fd00::/8"),
        ("::1.2.3.4", "::102:304/128"),  # as Go (the policy's CEL) writes it, not glibc
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1/128"),
        ("::/0", "::/0"),
        ("10.0.0.0/08", "10.0.0.0/8"),
    ],
)
def test_cidrs_are_kept_in_canonical_form(text: str, canonical: str) -> None:
    assert parse_cidr(text) == canonical


@pytest.mark.parametrize(
    "text",
    ["10.0.0.0/33", "::1/129", "01.2.3.4/8", "fe80::1%eth0/64", "10.0.0.0/255.0.0.0", "10.0.0.0/",
     "1.2.3", "10.0.0.0/-1", "10.0.0.0/8/8", ""],
)  # fmt: skip
def test_malformed_cidrs_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"CIDR|prefix length"):
        parse_cidr(text)


def test_equal_configs_that_set_different_fields_keep_their_own_provenance() -> None:
    # The install's config spells out the built-in defaults; the values are
    # equal, but a preview must still say which file chose them.
    spelled_out = parse_config("proxy:\n  logLevel: warning\n", origin="install")
    built_in = InjectorConfig()
    assert spelled_out == built_in
    key = P + "log-level"
    first = resolve_settings(
        spelled_out, namespace_labels={}, namespace_annotations={}, pod_annotations={}
    )
    second = resolve_settings(
        built_in, namespace_labels={}, namespace_annotations={}, pod_annotations={}
    )
    assert first.provenance[key].source is Source.CONFIG
    assert second.provenance[key].source is Source.BUILT_IN


def test_cached_provenance_cannot_be_changed_by_a_consumer() -> None:
    settings = resolve()
    with pytest.raises(TypeError):
        settings.provenance[P + "log-level"] = settings.provenance[P + "log-level"]  # type: ignore[index]
    assert resolve().provenance == settings.provenance
