"""The proxy container's bootstrap through real ``envoy --mode validate`` and its hook scripts through
``bash -n``.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest

from harness.kubelet import EXAMPLE_POD_FIELDS
from harness.kubelet import envoy_validate as run_envoy_validate
from tests.builders import proxy_settings
from webhook.engine.config import InjectorConfig
from webhook.engine.proxy import drain_command, mesh_proxy_container, wait_ready_command

CONFIG = InjectorConfig()
POD_FIELDS = EXAMPLE_POD_FIELDS


def envoy_validate(container: dict[str, Any]) -> None:
    run_envoy_validate(container, POD_FIELDS)


@pytest.mark.parametrize(
    "annotations",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"xds-address": "xds.mesh-system.svc:15010"}, id="xds-dns-name"),
        pytest.param({"xds-address": "10.96.0.10:15010"}, id="xds-ipv4"),
        pytest.param({"xds-address": "[::1]:15010"}, id="xds-ipv6"),
        pytest.param({"include-inbound-ports": "8080,9090"}, id="include-inbound-list"),
        pytest.param({"native-sidecar": "true"}, id="native"),
        pytest.param({"hold-application": "true"}, id="hold"),
        pytest.param({"native-sidecar": "true", "hold-application": "true"}, id="native-hold"),
        *(
            pytest.param({"log-level": level}, id=f"log-{level}")
            for level in ("trace", "debug", "info", "warning", "error", "critical", "off")
        ),
    ],
)
def test_proxy_bootstrap_passes_envoy_validate(annotations: dict[str, str]) -> None:
    envoy_validate(mesh_proxy_container(proxy_settings(**annotations), CONFIG))


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    "command",
    [
        pytest.param(drain_command(native=False, seconds=5), id="drain-classic"),
        pytest.param(drain_command(native=True, seconds=5), id="drain-native"),
        pytest.param(wait_ready_command(), id="wait-ready"),
    ],
)
def test_hook_scripts_are_valid_bash(command: list[str]) -> None:
    result = subprocess.run(
        ["bash", "-n", "-c", command[2]], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
