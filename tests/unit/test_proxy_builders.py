"""The two injected containers: real ``envoy --mode validate`` and real ``iptables-restore --test``.

The bootstrap is validated the way it will run: the container's own
``command`` + ``args`` after the kubelet's ``$(VAR)`` expansion.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.kubelet import EXAMPLE_POD_FIELDS, container_env, expand_vars
from tests.builders import proxy_settings
from tests.profiles import examples
from webhook.contract import constants
from webhook.engine.bootstrap import bootstrap_config, render_bootstrap
from webhook.engine.config import InjectorConfig, ProxyConfig
from webhook.engine.flow_yaml import flow_document as flow_yaml
from webhook.engine.iptables import mesh_init_container
from webhook.engine.proxy import drain_command, mesh_proxy_container

P = constants.PREFIX
CONFIG = InjectorConfig()
POD_FIELDS = EXAMPLE_POD_FIELDS


# --- kubelet expansion helper ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)", "x1y2"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$1"),
        ("$(MISSING)", "$(MISSING)"),
        ("$(A", "$(A"),
        ("$()", "$()"),
        ("$x", "$x"),
        ("a$", "a$"),
        ("$(A)$(A)", "11"),
    ],
)
def test_expand_vars_follows_kubelet_semantics(text: str, expected: str) -> None:
    assert expand_vars(text, {"A": "1", "B": "2"}) == expected


def test_container_env_resolves_field_refs_and_earlier_vars() -> None:
    container = {
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "URL", "value": "http://$(POD_IP):8080"},
        ]
    }
    assert container_env(container, POD_FIELDS)["URL"] == "http://10.20.30.40:8080"


# --- mesh-proxy -----------------------------------------------------------------------


def test_proxy_container_shape() -> None:
    container = mesh_proxy_container(proxy_settings(), CONFIG)
    assert container["name"] == constants.PROXY_CONTAINER
    assert container["image"] == f"{CONFIG.proxy.image}:{CONFIG.proxy.version}"
    assert container["command"] == ["envoy"]
    args = container["args"]
    assert args[args.index("--log-level") + 1] == "warning"
    assert "--disable-hot-restart" in args
    context = container["securityContext"]
    assert context["runAsUser"] == context["runAsGroup"] == CONFIG.proxy.uid
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert {port["containerPort"] for port in container["ports"]} == {15090}
    assert all(len(port["name"]) <= 15 for port in container["ports"])


def test_native_is_the_default_and_classic_is_one_setting_away() -> None:
    native = mesh_proxy_container(proxy_settings(), CONFIG)
    assert native["restartPolicy"] == "Always"
    assert "postStart" not in native["lifecycle"]
    classic = mesh_proxy_container(proxy_settings(**{"native-sidecar": "false"}), CONFIG)
    assert "restartPolicy" not in classic
    assert set(classic["lifecycle"]) == {"preStop"}


@pytest.mark.parametrize("native", ["true", "false"])
def test_every_mode_has_a_one_second_startup_probe_before_readiness(native: str) -> None:
    container = mesh_proxy_container(proxy_settings(**{"native-sidecar": native}), CONFIG)
    startup = container["startupProbe"]
    assert startup["httpGet"] == container["readinessProbe"]["httpGet"]
    assert startup["periodSeconds"] == 1
    # Longer than the 30 s Envoy takes to give up on an unreachable control plane.
    assert startup["periodSeconds"] * startup["failureThreshold"] > 30


def test_hold_application_adds_the_blocking_post_start_hook_in_classic_mode_only() -> None:
    native_hold = mesh_proxy_container(proxy_settings(**{"hold-application": "true"}), CONFIG)
    assert "postStart" not in native_hold["lifecycle"]
    hold = mesh_proxy_container(
        proxy_settings(**{"native-sidecar": "false", "hold-application": "true"}), CONFIG
    )
    assert hold["lifecycle"]["postStart"]["exec"]["command"][0] == "bash"
    assert "restartPolicy" not in hold


def test_the_pre_stop_hook_stops_inbound_and_only_classic_mode_waits() -> None:
    classic = drain_command(native=False, seconds=7)
    native = drain_command(native=True, seconds=7)
    for command in (classic, native):
        assert command[:2] == ["bash", "-c"]
        assert "/drain_listeners?inboundonly" in command[2]
        assert "graceful" not in command[2]
    assert "$SECONDS -lt 7" in classic[2]
    assert "SECONDS" not in native[2]
    # No drain time, nothing to wait for.
    assert "SECONDS" not in drain_command(native=False, seconds=0)[2]
    config = InjectorConfig(proxy=ProxyConfig(drain_seconds=42))
    container = mesh_proxy_container(proxy_settings(**{"native-sidecar": "false"}), config)
    assert "$SECONDS -lt 42" in container["lifecycle"]["preStop"]["exec"]["command"][2]


def test_only_the_transparent_listeners_have_a_traffic_direction() -> None:
    # inboundonly drains every listener that is not OUTBOUND: the outbound one
    # must say so, or the app's calls during shutdown would be refused.
    listeners = bootstrap_config(proxy_settings(), CONFIG)["static_resources"]["listeners"]
    directions = {item["name"]: item.get("traffic_direction") for item in listeners}
    assert directions == {
        "outbound": "OUTBOUND",
        "inbound": "INBOUND",
        "health": None,
    }


def test_proxy_resources_follow_settings_and_unset_values_are_omitted() -> None:
    container = mesh_proxy_container(
        proxy_settings(**{"proxy-cpu-limit": "1", "proxy-memory-limit": ""}), CONFIG
    )
    assert container["resources"] == {
        "limits": {"cpu": "1"},
        "requests": {"cpu": "100m", "memory": "128Mi"},
    }
    bare = mesh_proxy_container(
        proxy_settings(
            **{"proxy-cpu-request": "", "proxy-memory-request": "", "proxy-memory-limit": ""}
        ),
        CONFIG,
    )
    assert "resources" not in bare


def test_builders_do_not_mutate_and_are_deterministic() -> None:
    settings = proxy_settings(**{"exclude-outbound-cidrs": "10.0.0.0/8"})
    # Settings are frozen with immutable fields and read-only provenance, so a
    # field-by-field copy is a full snapshot (provenance compares separately).
    before = dataclasses.replace(settings)
    provenance_before = dict(settings.provenance)
    first = (mesh_proxy_container(settings, CONFIG), mesh_init_container(settings, CONFIG))
    second = (mesh_proxy_container(settings, CONFIG), mesh_init_container(settings, CONFIG))
    assert first == second
    assert settings == before
    assert dict(settings.provenance) == provenance_before


# mesh-init's rules and script: tests/unit/test_iptables.py.


# --- the bootstrap's text ----------------------------------------------------------------


@pytest.mark.parametrize(
    "annotations",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"xds-address": "xds.mesh-system.svc:15010"}, id="xds-dns-name"),
        pytest.param({"xds-address": "10.96.0.10:15010"}, id="xds-ipv4"),
        pytest.param({"xds-address": "[fd00::10]:15010"}, id="xds-ipv6"),
        pytest.param({"xds-address": "1xds.example:15010"}, id="xds-name-starting-with-a-digit"),
    ],
)
def test_the_compact_bootstrap_reads_back_as_the_config_it_renders(
    annotations: dict[str, str],
) -> None:
    settings = proxy_settings(**annotations)
    text = render_bootstrap(settings, CONFIG)
    assert "\n" not in text
    assert yaml.safe_load(text) == bootstrap_config(settings, CONFIG)
    # The TCP proxy's type URL, in four filter chains, is written once.
    assert text.count("tcp_proxy.v3.TcpProxy") == 1
    assert text.count("*t0") == 3


# What can reach the bootstrap: printable ASCII (settings are validated so), 64-bit
# integers, and the spellings YAML readers are known to read as something else.
TRICKY = ["yes", "On", "NULL", "inf", "NaN", "1.5", "0x10", "1:20", "~", "*", "&a", "!t", "-", "/", "10s", "1.2.3.4", "a b", "#x", "a: b", "", "@x", "'q'"]  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
    | st.sampled_from(TRICKY)
    # Long enough to be anchored and aliased when repeated (plain and quoted).
    | st.sampled_from(["type.googleapis.com/" + "x" * 20, "$(POD_IP) " + "y" * 30])
)


@settings(max_examples=examples(500), deadline=None)
@given(
    st.recursive(
        SCALARS,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8)
                | st.sampled_from(TRICKY),
                inner,
                max_size=3,
            )
        ),
        max_leaves=12,
    )
)
def test_a_plain_or_quoted_scalar_always_reads_back_as_the_same_value(value: Any) -> None:
    assert yaml.safe_load(flow_yaml(value)) == value
