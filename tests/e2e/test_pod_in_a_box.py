"""An injected pod really intercepts its traffic (pod-in-a-box, see podbox.py).

The pod is injected through the public CLI, then its ``mesh-init`` and
``mesh-proxy`` run as specified in a network namespace. Each test gets a fresh
box, torn down by ``pod_box`` whatever happens; the last test checks that
nothing was left behind.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.hostside import HostServer, connect_from_host, http_get
from tests.e2e.podbox import (
    leftovers,
    missing_requirement,
    pod_box,
    url_host,
)

_MISSING = missing_requirement()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_MISSING is not None, reason=f"pod-in-a-box {_MISSING}"),
]

P = "sidecar.mesh.io/"
APP_PORT = 8080  # redirected inbound
APP_EXCLUDED_PORT = 9090  # exclude-inbound-ports
UPSTREAM_PORT = 8081  # redirected outbound
UPSTREAM_EXCLUDED_PORT = 5432  # exclude-outbound-ports
XDS_PORT = 15010
CLI = Path(sys.executable).parent / "sidecar-injector"


def inject(tmp_path: Path, annotations: dict[str, str]) -> dict[str, Any]:
    """The pod as ``sidecar-injector inject -o json`` returns it for an opted-in namespace."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "namespace": "demo",
            "annotations": {
                P + "exclude-inbound-ports": str(APP_EXCLUDED_PORT),
                P + "exclude-outbound-ports": str(UPSTREAM_EXCLUDED_PORT),
                **annotations,
            },
        },
        "spec": {"containers": [{"name": "app", "image": "example.test/app:1"}]},
    }
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(pod))
    result = subprocess.run(
        [str(CLI), "inject", "-f", str(manifest), "--namespace", "demo",
         "--label", "sidecar-injection=enabled", "-o", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    injected: dict[str, Any] = json.loads(result.stdout)
    return injected


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    for item in [*(spec.get("initContainers") or []), *spec["containers"]]:
        if item["name"] == name:
            return dict(item)
    raise AssertionError(f"no container {name} in the injected pod")


@pytest.fixture
def upstreams() -> Iterator[dict[str, HostServer]]:
    """Filled in per box: servers on the host end of its veth."""
    servers: dict[str, HostServer] = {}
    try:
        yield servers
    finally:
        for server in servers.values():
            server.close()


def started_box_checks(box: Any, pod: dict[str, Any]) -> None:
    """Inbound through the proxy on the app port: the shortest proof of interception."""
    box.start_app_server(APP_PORT)
    before = box.stats()["listener.inbound.downstream_cx_total"]
    peer = connect_from_host(box.pod_ip, APP_PORT)
    assert peer.split()[0] == box.pod_ip, "the app should see the proxy's connection"
    assert box.stats()["listener.inbound.downstream_cx_total"] == before + 1
    del pod


# Box shapes for the interception test: pod_box() arguments. The proxy's health
# and metrics ports answer on the primary address (status.podIP), IPv4 when
# the pod has it; the redirect rules and listeners cover both families.
BOXES: dict[str, dict[str, bool]] = {
    "ipv4": {},
    "dual-stack": {"ipv6": True},
    "ipv6-only": {"ipv4": False, "ipv6": True},
}


@pytest.mark.parametrize(
    ("kind", "family"),
    [("ipv4", 4), ("dual-stack", 4), ("dual-stack", 6), ("ipv6-only", 6)],
)
def test_injected_pod_intercepts_inbound_and_outbound(
    tmp_path: Path, upstreams: dict[str, HostServer], kind: str, family: int
) -> None:
    pod = inject(tmp_path, {})
    with pod_box(**BOXES[kind]) as box:
        host_ip, pod_ip = box.addresses(family)
        table = box.run_init(pod, container(pod, "mesh-init"))
        assert "MESH_OUTPUT" in table
        # Both families' rules are in, whatever the pod's addresses.
        assert "-A MESH_OUTPUT -d 127.0.0.0/8 -o lo -j RETURN" in table
        assert "-A MESH_OUTPUT -d ::1/128 -o lo -j RETURN" in table
        box.start_proxy(pod, container(pod, "mesh-proxy"))
        box.start_app_server(APP_PORT)
        box.start_app_server(APP_EXCLUDED_PORT)
        upstreams["redirected"] = HostServer(host_ip, UPSTREAM_PORT)
        upstreams["excluded"] = HostServer(host_ip, UPSTREAM_EXCLUDED_PORT)
        box.wait_ready()

        # Inbound to the app's port: through the proxy, whose passthrough
        # connects from the pod IP; the inbound listener counts it.
        stats = box.stats()
        peer = connect_from_host(pod_ip, APP_PORT)
        assert peer.split()[0] == pod_ip
        after = box.stats()
        assert after["listener.inbound.downstream_cx_total"] == (
            stats["listener.inbound.downstream_cx_total"] + 1
        )
        # Inbound to an excluded port: straight to the app, from the host.
        peer = connect_from_host(pod_ip, APP_EXCLUDED_PORT)
        assert peer.split()[0] == host_ip
        assert (
            box.stats()["listener.inbound.downstream_cx_total"]
            == (after["listener.inbound.downstream_cx_total"])
        )

        # Outbound from the app: through 15001 exactly once (the proxy's own
        # upstream connection is UID-exempt, so it is not redirected again).
        stats = box.stats()
        answer = box.connect_as_app(host_ip, UPSTREAM_PORT)
        assert answer.split()[0] == pod_ip
        assert upstreams["redirected"].peers == [pod_ip]
        after = box.stats()
        assert after["listener.outbound.downstream_cx_total"] == (
            stats["listener.outbound.downstream_cx_total"] + 1
        )
        assert after["cluster.outbound_passthrough.upstream_cx_total"] == (
            stats.get("cluster.outbound_passthrough.upstream_cx_total", 0) + 1
        )
        # Outbound to an excluded port: direct, the proxy never sees it.
        box.connect_as_app(host_ip, UPSTREAM_EXCLUDED_PORT)
        assert upstreams["excluded"].peers == [pod_ip]
        assert (
            box.stats()["listener.outbound.downstream_cx_total"]
            == (after["listener.outbound.downstream_cx_total"])
        )

        # The app calling its own pod IP gets the inbound treatment (via lo).
        stats = box.stats()
        assert box.connect_as_app(pod_ip, APP_PORT).split()[0] == pod_ip
        after = box.stats()
        assert after["listener.inbound.downstream_cx_total"] == (
            stats["listener.inbound.downstream_cx_total"] + 1
        )
        assert (
            after["listener.outbound.downstream_cx_total"]
            == (stats["listener.outbound.downstream_cx_total"])
        )
        # A connection aimed straight at 15006 is dropped, not forwarded to itself.
        with socket.create_connection((pod_ip, 15006), timeout=5) as conn:
            conn.settimeout(5)
            assert conn.recv(1) == b""
        # The listener counted it before closing it; the stat may lag the close.
        expected = after["listener.inbound.downstream_cx_total"] + 1
        deadline = time.monotonic() + 10
        while (counted := box.stats()["listener.inbound.downstream_cx_total"]) < expected:
            assert time.monotonic() < deadline, f"inbound connections {counted}, want {expected}"
            time.sleep(0.05)
        assert counted == expected

        # Health and metrics answer on the primary pod IP from outside; admin does not.
        primary = url_host(box.pod_ip)
        status, _ = http_get(f"http://{primary}:15021/healthz/ready")
        assert status == 200
        status, body = http_get(f"http://{primary}:15090/stats/prometheus")
        assert status == 200
        assert "envoy_listener_downstream_cx_total" in body
        assert http_get(f"http://{primary}:15090/stats")[0] == 404
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((pod_ip, 15000), timeout=3).close()


def test_proxy_dials_the_xds_address_over_http2(
    tmp_path: Path, upstreams: dict[str, HostServer]
) -> None:
    with pod_box() as box:
        pod = inject(tmp_path, {P + "xds-address": f"{box.host_ip}:{XDS_PORT}"})
        upstreams["xds"] = HostServer(box.host_ip, XDS_PORT, capture=24)
        box.run_init(pod, container(pod, "mesh-init"))
        box.start_proxy(pod, container(pod, "mesh-proxy"))
        preface = upstreams["xds"].wait_capture(timeout=15)
        assert preface == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", box.envoy_log()[-2000:]
        assert upstreams["xds"].peers[0] == box.pod_ip


def test_native_sidecar_still_intercepts(tmp_path: Path) -> None:
    pod = inject(tmp_path, {P + "native-sidecar": "true", P + "hold-application": "true"})
    proxy = container(pod, "mesh-proxy")
    assert proxy["restartPolicy"] == "Always"
    assert [c["name"] for c in pod["spec"]["initContainers"]][:2] == ["mesh-init", "mesh-proxy"]
    with pod_box() as box:
        box.run_init(pod, container(pod, "mesh-init"))
        box.start_proxy(pod, proxy)
        box.wait_ready()  # what the startup probe waits for
        started_box_checks(box, pod)


def test_hold_application_hook_returns_only_once_the_proxy_is_ready(tmp_path: Path) -> None:
    pod = inject(tmp_path, {P + "native-sidecar": "false", P + "hold-application": "true"})
    proxy = container(pod, "mesh-proxy")
    assert pod["spec"]["containers"][0]["name"] == "mesh-proxy"
    hook = proxy["lifecycle"]["postStart"]["exec"]["command"]
    with pod_box() as box:
        box.run_init(pod, container(pod, "mesh-init"))
        # The kubelet runs the hook in the container (its user, its env) right
        # after starting it. Start the hook first, so it demonstrably waits.
        env = box.container_environ(pod, proxy)
        uid = proxy["securityContext"]["runAsUser"]
        waiting = box.start(hook, uid=uid, env=env)
        time.sleep(1)
        assert waiting.poll() is None, "the hook returned before the proxy even started"
        box.start_proxy(pod, proxy)
        assert waiting.wait(timeout=20) == 0
        # Returned, so ready now: the kubelet would start the app at this point.
        assert http_get(f"http://{box.pod_ip}:15021/healthz/ready")[0] == 200
        started_box_checks(box, pod)


def test_nothing_is_left_behind() -> None:
    # Runs last in this module: every box above has been torn down by now.
    assert leftovers() == []
