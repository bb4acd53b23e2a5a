"""The config file loader: the engine's dataclasses out, and which fields the file set."""

from __future__ import annotations

import pytest

from webhook.engine.config import InjectorConfig, ProxyConfig, Resources
from webhook.engine.settings import Source, resolve_settings
from webhook.manifests.config_file import ConfigError, load_config, parse_config

P = "sidecar.mesh.io/"


def sources(config: InjectorConfig) -> dict[str, Source]:
    settings = resolve_settings(
        config, namespace_labels={}, namespace_annotations={}, pod_annotations={}
    )
    return {key.removeprefix(P): item.source for key, item in settings.provenance.items()}


def test_the_loader_records_the_fields_the_file_set_at_every_level() -> None:
    config = parse_config(
        "proxy:\n  version: v9.9.9\n  resources:\n    cpuLimit: null\nipv6: false\n"
    )
    assert config.from_file == {"proxy", "ipv6"}
    assert config.proxy.from_file == {"version", "resources"}
    assert config.proxy.resources.from_file == {"cpu_limit"}
    assert config.init.from_file == frozenset()
    assert config.proxy.resources == Resources(cpu_limit=None)
    assert (config.proxy.version, config.ipv6) == ("v9.9.9", False)


def test_a_value_spelled_out_in_the_file_is_the_files_even_when_it_is_the_default() -> None:
    found = sources(parse_config("proxy:\n  resources:\n    cpuLimit: null\n"))
    assert found["proxy-cpu-limit"] is Source.CONFIG
    assert found["proxy-cpu-request"] is Source.BUILT_IN
    assert set(sources(load_config(None)).values()) == {Source.BUILT_IN}


def test_provenance_comes_from_from_file_alone_for_a_config_built_in_code() -> None:
    # Keyword construction (tests, the benchmark) records nothing by itself;
    # a caller standing in for a file says what it set.
    plain = InjectorConfig(proxy=ProxyConfig(version="v1.39.0"))
    said = InjectorConfig(
        proxy=ProxyConfig(version="v1.39.0", from_file=frozenset({"version"})),
        from_file=frozenset({"proxy"}),
    )
    assert sources(plain)["proxy-version"] is Source.BUILT_IN
    assert sources(said)["proxy-version"] is Source.CONFIG
    assert sources(said)["log-level"] is Source.BUILT_IN


def test_which_fields_the_file_set_takes_no_part_in_equality_or_hashing() -> None:
    spelled_out = parse_config("proxy:\n  logLevel: warning\n")
    assert spelled_out == InjectorConfig()
    assert hash(spelled_out) == hash(InjectorConfig())
    assert spelled_out.proxy.from_file != InjectorConfig().proxy.from_file


def test_the_engine_config_is_read_only() -> None:
    config = InjectorConfig()
    with pytest.raises(AttributeError):
        config.ipv6 = False  # type: ignore[misc]


def test_errors_name_the_config_class_as_before() -> None:
    with pytest.raises(ConfigError, match=r"^c: proxy: .*instance of ProxyConfig$"):
        parse_config("proxy: null\n", origin="c")
    with pytest.raises(ConfigError, match=r"^c: proxy\.resources: .*instance of Resources$"):
        parse_config("proxy:\n  resources: 5\n", origin="c")


# --- the file format: errors name the key, hostile values are refused ------------------


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


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('init:\n  image: "mesh-init\\nx"\n', "init.image"),
        ('proxy:\n  version: "v1\\r"\n', "proxy.version"),
        ('excludedNamespaces: ["a\\tb"]\n', "excludedNamespaces"),
    ],
)
def test_config_strings_with_control_characters_are_refused(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(text, origin="config.yaml")
    message = str(refused.value)
    assert message.startswith(f"config.yaml: {key}:"), message
    assert "contains a control character" in message
    assert not {"\n", "\r", "\t"} & set(message)


def test_an_empty_config_file_means_the_defaults() -> None:
    assert parse_config("") == InjectorConfig()


def test_the_config_file_checks_the_xds_address_as_strictly() -> None:
    with pytest.raises(ConfigError, match=r"proxy\.xdsAddress"):
        parse_config('proxy:\n  xdsAddress: "xds.svc:\\uff11\\uff10"\n')


def test_config_file_quantities_of_any_magnitude_are_judged() -> None:
    with pytest.raises(ConfigError, match=r"proxy\.resources\.cpuRequest.*too large"):
        parse_config('proxy:\n  resources:\n    cpuRequest: "1e1000000"\n')
    with pytest.raises(ConfigError, match=r"proxy\.resources\.cpuLimit"):
        parse_config("proxy:\n  resources:\n    cpuLimit: 1.0e+1000000\n")  # YAML: inf


def test_the_config_files_proxy_version_is_an_image_tag() -> None:
    with pytest.raises(ConfigError, match=r"proxy\.version"):
        parse_config('proxy:\n  version: "v1.40.0\\n"\n')
    assert parse_config("proxy:\n  version: v1.41.0\n").proxy.version == "v1.41.0"
