"""The proxy's listener addresses: both families where traffic is redirected, the pod IP
for health and metrics, and nothing IPv6 when the config turns IPv6 off.

Each bootstrap is checked by the real ``envoy --mode validate``, as the
kubelet would run it (``$(VAR)`` expanded), including on an IPv6-only pod and
on a kernel without IPv6 (simulated: tests/support/no_ipv6.py).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import pytest

from tests.support import no_ipv6
from tests.support.kubelet import (
    EXAMPLE_POD_FIELDS,
    container_env,
    envoy_validate,
    expanded_command,
    find_envoy,
)
from webhook.contract import constants
from webhook.engine.bootstrap import bootstrap_config
from webhook.engine.config import InjectorConfig
from webhook.engine.proxy import mesh_proxy_container
from webhook.engine.settings import ProxySettings, resolve_settings

IPV6_OFF = InjectorConfig(ipv6=False)
IPV6_ONLY_POD = {**EXAMPLE_POD_FIELDS, "status.podIP": "fd00:10:20::30"}


def settings(config: InjectorConfig) -> ProxySettings:
    return resolve_settings(
        config, namespace_labels={}, namespace_annotations={}, pod_annotations={}
    )


def listeners(config: InjectorConfig) -> dict[str, dict[str, Any]]:
    found = bootstrap_config(settings(config), config)["static_resources"]["listeners"]
    return {listener["name"]: listener for listener in found}


def addresses(listener: dict[str, Any]) -> list[tuple[str, int]]:
    every = [listener["address"]] + [a["address"] for a in listener.get("additional_addresses", [])]
    return [(a["socket_address"]["address"], a["socket_address"]["port_value"]) for a in every]


def test_redirect_targets_listen_on_both_families() -> None:
    found = listeners(InjectorConfig())
    assert addresses(found["outbound"]) == [("0.0.0.0", 15001), ("::", 15001)]
    assert addresses(found["inbound"]) == [("0.0.0.0", 15006), ("::", 15006)]
    for name in ("outbound", "inbound"):
        assert found[name]["use_original_dst"] is True
        # A separate IPv6-only socket, not one dual-stack socket (see bootstrap.py).
        assert "ipv4_compat" not in orjson.dumps(found[name]).decode()


def test_health_and_metrics_listen_on_the_pods_primary_address() -> None:
    found = listeners(InjectorConfig())
    # One HTTP listener answers on both ports (bootstrap.py).
    assert addresses(found["health"]) == [
        ("$(POD_IP)", constants.HEALTH_PORT),
        ("$(POD_IP)", constants.PROMETHEUS_PORT),
    ]


def test_with_ipv6_off_no_ipv6_address_is_named() -> None:
    found = listeners(IPV6_OFF)
    assert addresses(found["outbound"]) == [("0.0.0.0", 15001)]
    assert addresses(found["inbound"]) == [("0.0.0.0", 15006)]
    text = orjson.dumps(bootstrap_config(settings(IPV6_OFF), IPV6_OFF)).decode()
    assert '"::"' not in text


@pytest.mark.parametrize(
    ("config", "pod_fields"),
    [
        pytest.param(InjectorConfig(), EXAMPLE_POD_FIELDS, id="dual-stack-ipv4-primary"),
        pytest.param(InjectorConfig(), IPV6_ONLY_POD, id="ipv6-only-pod"),
        pytest.param(IPV6_OFF, EXAMPLE_POD_FIELDS, id="ipv6-off"),
    ],
)
def test_the_bootstrap_passes_envoy_validate(
    config: InjectorConfig, pod_fields: dict[str, str]
) -> None:
    envoy_validate(mesh_proxy_container(settings(config), config), pod_fields)


def validate_without_ipv6(config: InjectorConfig) -> subprocess.CompletedProcess[str]:
    container = mesh_proxy_container(settings(config), config)
    argv = expanded_command(container, container_env(container, EXAMPLE_POD_FIELDS))
    return subprocess.run(
        [sys.executable, "-m", "tests.support.no_ipv6", str(find_envoy()), "--mode", "validate",
         *argv[1:]],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.skipif(not no_ipv6.supported(), reason="the no-IPv6 filter is x86-64 Linux only")
def test_on_a_kernel_without_ipv6_envoy_refuses_ipv6_listeners_unless_the_config_turns_them_off() -> (
    None
):
    # Why ``ipv6: false`` exists: Envoy will not even parse "::" where IPv6
    # sockets cannot be created. Should a future Envoy accept it, this fails and
    # the knob (and its documentation) can go.
    refused = validate_without_ipv6(InjectorConfig())
    assert refused.returncode != 0
    assert "malformed IP address: ::" in refused.stderr
    accepted = validate_without_ipv6(IPV6_OFF)
    assert accepted.returncode == 0, accepted.stderr[-2000:]
