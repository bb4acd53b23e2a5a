"""The proxy's listeners as real Envoy takes them: ``envoy --mode validate``, with and without IPv6."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import no_ipv6
from harness.kubelet import (
    EXAMPLE_POD_FIELDS,
    container_env,
    envoy_validate,
    expanded_command,
    find_envoy,
)
from tests.builders import proxy_settings
from webhook.engine.config import InjectorConfig
from webhook.engine.proxy import mesh_proxy_container

IPV6_OFF = InjectorConfig(ipv6=False)
IPV6_ONLY_POD = {**EXAMPLE_POD_FIELDS, "status.podIP": "fd00:10:20::30"}


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
    envoy_validate(mesh_proxy_container(proxy_settings(config), config), pod_fields)


def validate_without_ipv6(config: InjectorConfig) -> subprocess.CompletedProcess[str]:
    container = mesh_proxy_container(proxy_settings(config), config)
    argv = expanded_command(container, container_env(container, EXAMPLE_POD_FIELDS))
    return subprocess.run(
        [sys.executable, "-m", "harness.no_ipv6", str(find_envoy()), "--mode", "validate",
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
