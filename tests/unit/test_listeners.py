"""The proxy's listener addresses: both families where traffic is redirected, the pod IP
for health and metrics, and nothing IPv6 when the config turns IPv6 off.

Each bootstrap is checked by the real ``envoy --mode validate``, as the
kubelet would run it (``$(VAR)`` expanded), including on an IPv6-only pod and
on a kernel without IPv6 (simulated: harness/no_ipv6.py).
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.builders import proxy_settings
from webhook.contract import constants
from webhook.engine.bootstrap import bootstrap_config
from webhook.engine.config import InjectorConfig

IPV6_OFF = InjectorConfig(ipv6=False)


def listeners(config: InjectorConfig) -> dict[str, dict[str, Any]]:
    found = bootstrap_config(proxy_settings(config), config)["static_resources"]["listeners"]
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
    text = orjson.dumps(bootstrap_config(proxy_settings(IPV6_OFF), IPV6_OFF)).decode()
    assert '"::"' not in text
