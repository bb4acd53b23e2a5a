"""Settings: every key, the precedence, the label separator, provenance, refusals."""

from __future__ import annotations

import pytest

from webhook.config import ConfigError, InjectorConfig, parse_config
from webhook.settings import SETTING_KEYS, SettingsError, Source, resolve_settings

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
    settings = resolve({P + "proxy-cpu": "1"}, pod={P + "inject": "true", P + "status": "{}"})
    assert settings.warnings == (
        "namespace label sidecar.mesh.io/proxy-cpu is not a known setting and is ignored",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("proxy: [", "is not valid YAML"),
        ("- a", "must be a mapping"),
        ("proxy:\n  uid: 0\n", "proxy.uid"),
        ("proxy:\n  image: envoy:v1\n", "proxy.image"),
        ("proxy:\n  resources:\n    cpuRequest: lots\n", "proxy.resources.cpuRequest"),
        ("proxy:\n  logLevel: loud\n", "proxy.logLevel"),
        ("proxy:\n  xdsAddress: nope\n", "proxy.xdsAddress"),
        ("unknownKey: 1\n", "unknownKey"),
    ],
)
def test_config_file_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(text, origin="config.yaml")


def test_an_empty_config_file_means_the_defaults() -> None:
    assert parse_config("") == InjectorConfig()
