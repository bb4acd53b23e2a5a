"""Pod-in-a-box with IPv6 in play: per-family CIDR settings, and nodes where IPv6 is off.

The interception test itself runs over IPv4 and IPv6 in test_pod_in_a_box.py
(IPv4, dual-stack both ways, IPv6-only). Here:

* CIDR settings go to their own family's rules: excluding the host's IPv6
  address leaves IPv4 to it intercepted, and an include list that names only
  IPv4 leaves IPv6 alone (the settings warn about that);
* a pod whose namespace has IPv6 turned off by sysctl (``disable_ipv6=1``):
  the kernel still has IPv6, so ``mesh-init`` programs both halves (harmless,
  and no bypass should IPv6 be turned back on) and the pod works over IPv4;
* a kernel without IPv6 (booted ``ipv6.disable=1``). This one has IPv6, so
  the box shows the script what such a kernel shows a container: no
  ``/proc/net/if_inet6`` (podbox ``hide_ipv6``), and Envoy cannot create IPv6
  sockets (harness/no_ipv6.py). ``mesh-init`` skips its IPv6 half and
  says so; with ``ipv6: false`` in the injector config the proxy starts and
  intercepts IPv4. (With the default ``ipv6: true`` Envoy refuses its
  bootstrap there: tests/process/test_listeners_envoy.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import no_ipv6
from tests.e2e.hostside import HostServer, connect_from_host
from tests.e2e.podbox import (
    Box,
    leftovers,
    missing_requirement,
    pod_box,
)
from webhook.engine.iptables import SKIPPED_IPV6

_MISSING = missing_requirement()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_MISSING is not None, reason=f"pod-in-a-box {_MISSING}"),
]

P = "sidecar.mesh.io/"
APP_PORT = 8080
UPSTREAM_PORT = 8081
CLI = Path(sys.executable).parent / "sidecar-injector"


def inject(
    tmp_path: Path, annotations: dict[str, str], *, config: str | None = None
) -> tuple[dict[str, Any], str]:
    """The pod as ``sidecar-injector inject -o json`` returns it, and the CLI's stderr."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "demo", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "example.test/app:1"}]},
    }
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(pod))
    argv = [str(CLI), "inject", "-f", str(manifest), "--namespace", "demo",
            "--label", "sidecar-injection=enabled", "-o", "json"]  # fmt: skip
    if config is not None:
        (tmp_path / "config.yaml").write_text(config)
        argv += ["--config", str(tmp_path / "config.yaml")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    injected: dict[str, Any] = json.loads(result.stdout)
    return injected, result.stderr


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    for item in [*(spec.get("initContainers") or []), *spec["containers"]]:
        if item["name"] == name:
            return dict(item)
    raise AssertionError(f"no container {name} in the injected pod")


@pytest.fixture
def upstreams() -> Iterator[list[HostServer]]:
    servers: list[HostServer] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def outbound_count(box: Box) -> int:
    return box.stats()["listener.outbound.downstream_cx_total"]


def proxied(box: Box, host_ip: str, pod_ip: str, server: HostServer) -> bool:
    """Connect from the app to ``server``; whether the proxy carried it (it always arrives)."""
    before = outbound_count(box)
    answer = box.connect_as_app(host_ip, UPSTREAM_PORT)
    assert answer.split()[0] == pod_ip
    assert server.peers[-1] == pod_ip
    return outbound_count(box) == before + 1


@pytest.mark.parametrize(
    ("setting", "through_proxy"),
    [
        ("exclude-ipv6-host", {4: True, 6: False}),
        ("include-ipv4-host-only", {4: True, 6: False}),
        ("include-ipv6-host-only", {4: False, 6: True}),
    ],
)
def test_cidr_settings_apply_to_their_own_family(
    tmp_path: Path, upstreams: list[HostServer], setting: str, through_proxy: dict[int, bool]
) -> None:
    with pod_box(ipv6=True) as box:
        host4, host6 = box.addresses(4)[0], box.addresses(6)[0]
        annotations = {
            "exclude-ipv6-host": {P + "exclude-outbound-cidrs": f"{host6}/128"},
            "include-ipv4-host-only": {P + "include-outbound-cidrs": f"{host4}/32"},
            "include-ipv6-host-only": {P + "include-outbound-cidrs": f"{host6}/128"},
        }[setting]
        pod, stderr = inject(tmp_path, annotations)
        if setting.startswith("include"):
            missing = 6 if setting == "include-ipv4-host-only" else 4
            assert f"names no IPv{missing} range" in stderr
        box.run_init(pod, container(pod, "mesh-init"))
        box.start_proxy(pod, container(pod, "mesh-proxy"))
        box.wait_ready()
        for family in (4, 6):
            host_ip, pod_ip = box.addresses(family)
            server = HostServer(host_ip, UPSTREAM_PORT)
            upstreams.append(server)
            assert proxied(box, host_ip, pod_ip, server) is through_proxy[family], family


def test_a_pod_with_ipv6_disabled_by_sysctl_starts_and_intercepts_ipv4(
    tmp_path: Path, upstreams: list[HostServer]
) -> None:
    pod, _ = inject(tmp_path, {})
    with pod_box(disable_ipv6=True) as box:
        assert box.run(["cat", "/proc/net/if_inet6"]).stdout == ""  # no IPv6 address at all
        table = box.run_init(pod, container(pod, "mesh-init"))
        # The kernel has IPv6, so both halves are programmed: no failure, no bypass later.
        assert SKIPPED_IPV6 not in table
        assert "-A MESH_OUTPUT -d ::1/128 -o lo -j RETURN" in table
        box.start_proxy(pod, container(pod, "mesh-proxy"))
        box.start_app_server(APP_PORT)
        box.wait_ready()
        assert connect_from_host(box.pod_ip, APP_PORT).split()[0] == box.pod_ip
        server = HostServer(box.host_ip, UPSTREAM_PORT)
        upstreams.append(server)
        assert proxied(box, box.host_ip, box.pod_ip, server)


@pytest.mark.skipif(not no_ipv6.supported(), reason="the no-IPv6 filter is x86-64 Linux only")
def test_on_a_kernel_without_ipv6_mesh_init_skips_its_ipv6_half_and_the_pod_works(
    tmp_path: Path, upstreams: list[HostServer]
) -> None:
    pod, _ = inject(tmp_path, {}, config="ipv6: false\n")
    default_pod, _ = inject(tmp_path, {})
    with pod_box() as box:
        # The default script, as on such a node: it succeeds and says what it skipped.
        output = box.run_init(default_pod, container(default_pod, "mesh-init"), hide_ipv6=True)
        assert SKIPPED_IPV6 in output.splitlines()
        assert "-A OUTPUT -p tcp -j MESH_OUTPUT" in output  # the IPv4 half is in
        assert "MESH" not in box.run(["ip6tables-save", "-t", "nat"]).stdout  # truly skipped
        # With ipv6: false the proxy names no IPv6 address and starts without IPv6 sockets.
        init = container(pod, "mesh-init")
        assert "ip6tables" not in init["command"][2]
        wrapper = [sys.executable, "-m", "harness.no_ipv6"]
        box.start_proxy(pod, container(pod, "mesh-proxy"), wrapper=wrapper)
        box.start_app_server(APP_PORT)
        box.wait_ready()
        assert connect_from_host(box.pod_ip, APP_PORT).split()[0] == box.pod_ip
        server = HostServer(box.host_ip, UPSTREAM_PORT)
        upstreams.append(server)
        assert proxied(box, box.host_ip, box.pod_ip, server)


def test_nothing_is_left_behind() -> None:
    # Runs last in this module: every box above has been torn down by now.
    assert leftovers() == []
