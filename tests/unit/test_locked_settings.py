"""``lockedSettings``: the config's list, what a locked key resolves to, and the refusal.

A locked key is decided by the namespace and the config alone; a pod annotation
giving it another value (compared parsed) refuses the pod, the same value passes.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import pytest

from tests.builders import ENABLED, REPO, namespace
from webhook.engine import InjectionRefused, inject
from webhook.engine.config import InjectorConfig
from webhook.engine.settings import (
    SETTING_NAMES,
    SETTINGS_CACHE,
    LockedError,
    SettingsError,
    Source,
    locked_conflicts,
    resolve_settings,
)
from webhook.engine.values import MAX_CIDRS, MAX_SCALAR_CHARS
from webhook.manifests.config_file import ConfigError, parse_config

P = "sidecar.mesh.io/"


def locking(*names: str) -> InjectorConfig:
    return InjectorConfig(locked_settings=frozenset(names))


def resolve(
    config: InjectorConfig,
    *,
    labels: dict[str, str] | None = None,
    ns_annotations: dict[str, str] | None = None,
    pod: dict[str, str] | None = None,
) -> Any:
    return resolve_settings(
        config,
        namespace_labels=labels or {},
        namespace_annotations=ns_annotations or {},
        pod_annotations=pod or {},
    )


# --- the config file --------------------------------------------------------------------


def test_locked_settings_are_read_in_the_short_or_the_full_form_and_stored_short() -> None:
    config = parse_config(
        "lockedSettings: [include-outbound-cidrs, sidecar.mesh.io/xds-address, xds-address]\n"
    )
    assert config.locked_settings == {"include-outbound-cidrs", "xds-address"}
    assert "locked_settings" in config.from_file
    assert parse_config("").locked_settings == frozenset()
    assert parse_config(f"lockedSettings: [{', '.join(SETTING_NAMES)}]\n").locked_settings == set(
        SETTING_NAMES
    )


# fmt: off
CONFIG_ERRORS = [
    ("lockedSettings: [log-level, xds-adress]\n", "lockedSettings: Value error, entry 2 'xds-adress' is not a setting (settings: proxy-version, "),
    ("lockedSettings: [inject]\n", "lockedSettings: Value error, entry 1 'inject' is not a setting and cannot be locked: it chooses whether a pod is injected"),
    ("lockedSettings: [sidecar.mesh.io/rev]\n", "lockedSettings: Value error, entry 1 'sidecar.mesh.io/rev' is not a setting and cannot be locked: it chooses the injector revision"),
    ("lockedSettings: [status]\n", "lockedSettings: Value error, entry 1 'status' is not a setting and cannot be locked: the injector writes it"),
    ("lockedSettings: [sidecar-injection]\n", "lockedSettings: Value error, entry 1 'sidecar-injection' is not a setting"),
    ("lockedSettings: [log-level, 5]\n", "lockedSettings: Value error, entry 2 (5) is not a setting name"),
    ("lockedSettings: xds-address\n", "lockedSettings: Value error, must be a list of setting names, e.g. [xds-address]"),
    ("lockedSettings:\n", "lockedSettings: Value error, must be a list of setting names"),
    ('lockedSettings: ["xds-address\\u001b[2J"]\n', "lockedSettings: Value error, entry 1 'xds-address\\x1b[2J' is not a setting"),
]
# fmt: on


@pytest.mark.parametrize(("text", "message"), CONFIG_ERRORS)
def test_config_errors_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(text, origin="config.yaml")
    assert str(refused.value).startswith(f"config.yaml: {message}"), str(refused.value)
    assert "\x1b" not in str(refused.value)


# --- resolution -------------------------------------------------------------------------

CIDRS = "10.0.0.0/8,fd00::/8"

# (locked, namespace labels, namespace annotations, pod annotations, key, value, source)
# fmt: off
PASSES: list[tuple[str, dict[str, str], dict[str, str], dict[str, str], str, str, Source]] = [
    # nothing from the pod: the namespace, else the config, decides
    ("xds-address", {}, {P + "xds-address": "xds.mesh:15010"}, {}, "xds-address", "xds.mesh:15010", Source.NAMESPACE_ANNOTATION),
    ("log-level", {P + "log-level": "debug"}, {}, {}, "log-level", "debug", Source.NAMESPACE_LABEL),
    ("xds-address", {}, {}, {}, "xds-address", "", Source.BUILT_IN),
    # the same value from the pod, however it is spelled, passes
    ("xds-address", {}, {P + "xds-address": "xds.mesh:15010"}, {P + "xds-address": "xds.mesh:15010"}, "xds-address", "xds.mesh:15010", Source.NAMESPACE_ANNOTATION),
    ("exclude-inbound-ports", {P + "exclude-inbound-ports": "9090_9091"}, {}, {P + "exclude-inbound-ports": "9091, 9090,9091"}, "exclude-inbound-ports", "9090,9091", Source.NAMESPACE_LABEL),
    ("include-outbound-cidrs", {}, {P + "include-outbound-cidrs": CIDRS}, {P + "include-outbound-cidrs": "FD00::/8, 10.0.0.0/08, 10.0.0.0/8"}, "include-outbound-cidrs", CIDRS, Source.NAMESPACE_ANNOTATION),
    ("include-outbound-cidrs", {}, {}, {P + "include-outbound-cidrs": " * "}, "include-outbound-cidrs", "*", Source.BUILT_IN),
    ("proxy-cpu-request", {}, {}, {P + "proxy-cpu-request": "0.1"}, "proxy-cpu-request", "100m", Source.BUILT_IN),
    ("proxy-cpu-limit", {}, {}, {P + "proxy-cpu-limit": ""}, "proxy-cpu-limit", "", Source.BUILT_IN),
    ("native-sidecar", {P + "native-sidecar": "false"}, {}, {P + "native-sidecar": "FALSE"}, "native-sidecar", "false", Source.NAMESPACE_LABEL),
    ("log-level", {}, {}, {P + "log-level": "Warning"}, "log-level", "warning", Source.BUILT_IN),
    ("xds-address", {}, {}, {P + "xds-address": ""}, "xds-address", "", Source.BUILT_IN),
    # a key that is not locked still takes the pod's value
    ("xds-address", {}, {}, {P + "log-level": "error"}, "log-level", "error", Source.POD_ANNOTATION),
]
# fmt: on


@pytest.mark.parametrize(
    ("locked", "labels", "ns_annotations", "pod", "key", "value", "source"), PASSES
)
def test_a_locked_key_takes_the_namespaces_or_the_configs_value_and_the_same_value_passes(
    locked: str,
    labels: dict[str, str],
    ns_annotations: dict[str, str],
    pod: dict[str, str],
    key: str,
    value: str,
    source: Source,
) -> None:
    settings = resolve(locking(locked), labels=labels, ns_annotations=ns_annotations, pod=pod)
    found = settings.provenance[P + key]
    assert (found.value, found.source, found.locked) == (value, source, key == locked)


# (locked, namespace annotations, pod annotations, the message after "pod annotation ")
# fmt: off
REFUSALS: list[tuple[str, dict[str, str], dict[str, str], str]] = [
    ("xds-address", {P + "xds-address": "xds.mesh:15010"}, {P + "xds-address": "attacker.example.com:443"},
     "sidecar.mesh.io/xds-address='attacker.example.com:443' is refused: the injector config locks"
     " sidecar.mesh.io/xds-address (lockedSettings) to what the namespace and the config decide,"
     " here 'xds.mesh:15010' (namespace annotation); remove the annotation, or set it to that value"),
    ("include-outbound-cidrs", {}, {P + "include-outbound-cidrs": ""},
     "sidecar.mesh.io/include-outbound-cidrs='' is refused: the injector config locks"
     " sidecar.mesh.io/include-outbound-cidrs (lockedSettings) to what the namespace and the"
     " config decide, here '*' (built-in default); remove the annotation, or set it to that value"),
    ("include-outbound-cidrs", {P + "include-outbound-cidrs": CIDRS}, {P + "include-outbound-cidrs": "10.0.0.0/8"},
     "sidecar.mesh.io/include-outbound-cidrs='10.0.0.0/8' is refused: the injector config locks"),
    ("proxy-memory-limit", {}, {P + "proxy-memory-limit": ""},
     "sidecar.mesh.io/proxy-memory-limit='' is refused: the injector config locks"
     " sidecar.mesh.io/proxy-memory-limit (lockedSettings) to what the namespace and the config"
     " decide, here '512Mi' (built-in default)"),
    ("proxy-version", {}, {P + "proxy-version": "latest"},
     "sidecar.mesh.io/proxy-version='latest' is refused: the injector config locks"),
    # an invalid value is refused for the lock: it could never take effect
    ("proxy-cpu-request", {}, {P + "proxy-cpu-request": "lots"},
     "sidecar.mesh.io/proxy-cpu-request='lots' is refused: the injector config locks"
     " sidecar.mesh.io/proxy-cpu-request (lockedSettings) to what the namespace and the config"
     " decide, here '100m' (built-in default)"),
    ("xds-address", {}, {P + "xds-address": "x" * (MAX_SCALAR_CHARS + 1)},
     f"sidecar.mesh.io/xds-address={'x' * 48!r}... ({MAX_SCALAR_CHARS + 1} characters) is refused"),
    ("log-level", {}, {P + "log-level": "debug\n"},
     "sidecar.mesh.io/log-level='debug\\n' is refused: the injector config locks"),
]
# fmt: on


@pytest.mark.parametrize(("locked", "ns_annotations", "pod", "message"), REFUSALS)
def test_a_pod_annotation_giving_a_locked_key_another_value_is_refused(
    locked: str, ns_annotations: dict[str, str], pod: dict[str, str], message: str
) -> None:
    with pytest.raises(LockedError) as refused:
        resolve(locking(locked), ns_annotations=ns_annotations, pod=pod)
    assert str(refused.value).startswith(f"pod annotation {message}"), str(refused.value)
    assert isinstance(refused.value, SettingsError)  # every caller of settings refuses it
    assert "\n" not in str(refused.value)


def test_without_the_lock_the_same_annotations_win() -> None:
    for _locked, ns_annotations, pod, _message in REFUSALS[:5]:
        settings = resolve(InjectorConfig(), ns_annotations=ns_annotations, pod=pod)
        key = next(iter(pod))
        assert settings.provenance[key].source is Source.POD_ANNOTATION
        assert settings.provenance[key].locked is False


def test_an_invalid_namespace_value_of_a_locked_key_refuses_as_invalid_naming_the_namespace() -> (
    None
):
    with pytest.raises(SettingsError) as refused:
        resolve(
            locking("xds-address"),
            ns_annotations={P + "xds-address": "nope"},
            pod={P + "xds-address": "xds.mesh:15010"},
        )
    assert not isinstance(refused.value, LockedError)
    assert str(refused.value) == (
        "namespace annotation sidecar.mesh.io/xds-address='nope' is invalid: 'nope' is not host:port"
    )


def test_an_invalid_setting_is_refused_before_a_locked_one() -> None:
    with pytest.raises(SettingsError) as refused:
        resolve(
            locking("xds-address"),
            pod={P + "xds-address": "attacker.example.com:443", P + "log-level": "loud"},
        )
    assert not isinstance(refused.value, LockedError)
    assert str(refused.value).startswith(
        "pod annotation sidecar.mesh.io/log-level='loud' is invalid"
    )


def test_locked_conflicts_lists_every_locked_key_the_pod_changes_in_key_order() -> None:
    config = locking("xds-address", "include-outbound-cidrs", "log-level")
    in_force = resolve(config, ns_annotations={P + "log-level": "info"})
    pod = {
        P + "xds-address": "a.b:1",
        P + "log-level": "info",
        P + "include-outbound-cidrs": "",
        P + "proxy-version": "latest",
    }
    found = locked_conflicts(in_force, pod, config=config)
    assert [(c.key, c.raw, c.in_force.value) for c in found] == [
        (P + "include-outbound-cidrs", "", "*"),
        (P + "xds-address", "a.b:1", ""),
    ]
    assert locked_conflicts(in_force, pod, config=InjectorConfig()) == ()


def test_a_passing_lock_is_cached_and_a_refused_one_is_not() -> None:
    config = locking("exclude-inbound-ports")
    labels = {P + "exclude-inbound-ports": "9090_9091"}
    SETTINGS_CACHE.clear()
    first = resolve(config, labels=labels, pod={P + "exclude-inbound-ports": "9090,9091"})
    assert SETTINGS_CACHE.entries == 1
    assert resolve(config, labels=labels, pod={P + "exclude-inbound-ports": "9090,9091"}) is first
    with pytest.raises(LockedError):
        resolve(config, labels=labels, pod={P + "exclude-inbound-ports": "9090"})
    assert SETTINGS_CACHE.entries == 1
    SETTINGS_CACHE.clear()


def test_an_oversized_pod_value_of_a_locked_key_is_refused_without_entering_a_cache_key() -> None:
    config = locking("include-outbound-cidrs")
    huge = "10.0.0.0/8," * 300_000  # 3.3 MB
    SETTINGS_CACHE.clear()
    with pytest.raises(LockedError) as refused:
        resolve(config, pod={P + "include-outbound-cidrs": huge})
    assert "(3300000 characters) is refused: the injector config locks" in str(refused.value)
    # Only the settings in force were cached, charged for no pod text at all.
    assert SETTINGS_CACHE.entries == 1
    assert SETTINGS_CACHE.bytes == 4096
    with pytest.raises(SettingsError) as first:
        resolve(config, pod={P + "include-outbound-cidrs": huge, P + "log-level": "loud"})
    assert "log-level='loud' is invalid" in str(first.value)  # invalid values still come first
    SETTINGS_CACHE.clear()


def worst_cidrs(i: int) -> str:
    return ",".join(
        f"{0x1000 + i:x}:{0x1000 + j:x}:2222:3333:4444:5555:6666:7777/128" for j in range(MAX_CIDRS)
    )


def test_the_cache_charge_covers_entries_that_carry_a_pods_copy_of_a_locked_value() -> None:
    # Each namespace locks a worst-case CIDR list and its pods repeat it (reversed):
    # both copies stay in the entry, and the charge must cover them.
    config = locking("exclude-outbound-cidrs")
    key = P + "exclude-outbound-cidrs"
    SETTINGS_CACHE.clear()
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for i in range(40):
            value = worst_cidrs(i)
            reordered = ",".join(reversed(value.split(",")))
            resolve(config, ns_annotations={key: value}, pod={key: reordered})
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert SETTINGS_CACHE.entries == 40
    assert held <= SETTINGS_CACHE.bytes <= SETTINGS_CACHE.max_bytes
    SETTINGS_CACHE.clear()


# --- through inject ---------------------------------------------------------------------

SHOP = namespace("shop", ENABLED, {P + "xds-address": "xds.mesh:15010"})


def deployment(annotations: dict[str, str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "template": {
                "metadata": {"annotations": annotations, "labels": labels or {}},
                "spec": {"containers": [{"name": "app", "image": "app"}]},
            }
        },
    }


def test_inject_refuses_a_template_that_changes_a_locked_key_naming_the_workload() -> None:
    pod = deployment({P + "xds-address": "attacker.example.com:443"})
    with pytest.raises(InjectionRefused) as refused:
        inject(pod, namespace=SHOP, config=locking("xds-address"))
    assert str(refused.value).startswith(
        "Deployment shop/web: pod annotation sidecar.mesh.io/xds-address="
        "'attacker.example.com:443' is refused: the injector config locks"
    )
    same = inject(
        deployment({P + "xds-address": "xds.mesh:15010"}),
        namespace=SHOP,
        config=locking("xds-address"),
    )
    assert same.injected
    assert same.settings is not None
    assert same.settings.xds_address == "xds.mesh:15010"


def test_a_pod_that_would_not_be_injected_is_never_refused_for_a_lock() -> None:
    opted_out = deployment({P + "xds-address": "attacker.example.com:443"}, {P + "inject": "false"})
    result = inject(opted_out, namespace=SHOP, config=locking("xds-address"))
    assert (result.injected, result.decision.code) == (False, "pod-opted-out")


@pytest.mark.parametrize("doc", ["README.md", "docs/settings.md"])
def test_the_documented_lock_examples_are_valid_configs(doc: str) -> None:
    text = (REPO / doc).read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    examples = [b for b in blocks if "lockedSettings" in b]
    assert examples
    for example in examples:
        assert "xds-address" in parse_config(example, origin=doc).locked_settings
