"""A real xDS control plane drives an injected proxy over ADS (pod-in-a-box).

The control plane is ``xds-testserver`` (go-control-plane's ADS server over
its snapshot cache, tests/e2e/xds/), on the host end of the box's veth where
the pod's ``xds-address`` points. The mesh it pushes is one service:

* a virtual IP (no interface has it, nothing listens on it) and port, the
  app's own port number on purpose: LDS pushes a listener there with
  ``bind_to_port: false``, which the static 15001 listener hands the
  redirected connection to by its original destination;
* its route (RDS) splits requests by weight between clusters ``svc-a`` and
  ``svc-b`` (CDS), whose endpoints (EDS) are HTTP servers on the host that
  answer with their name.

Each test gets a fresh box, control plane and endpoints; the last test checks
that nothing was left behind. The binary is built on first use (``make
xds-server`` builds it ahead, as .ci/run does) and cached by a hash of its
sources.
"""

from __future__ import annotations

import contextlib
import http.client
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.hostside import HostHTTPServer, HostServer, connect_from_host, http_get
from tests.e2e.podbox import (
    Box,
    missing_requirement,
    own_leftovers,
    pod_box,
)
from tests.e2e.xds_mesh import (
    ENDPOINT_PORTS,
    NODE_CLUSTER,
    NODE_ID,
    RECONNECT_TIMEOUT,
    SERVICE_PORT,
    UPSTREAM_PORT,
    XDS_PORT,
    P,
    bad_listener,
    container,
    inject_pod,
    snapshot,
)
from tests.e2e.xds_server import (
    ALL_TYPES,
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    XdsServer,
    build_binary,
    cached_binary,
    can_build,
)

_MISSING = missing_requirement()
_CACHED = cached_binary() if _MISSING is None else None
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_MISSING is not None, reason=f"pod-in-a-box {_MISSING}"),
]
if _MISSING is None and _CACHED is None and can_build():
    # The first test builds the server (minutes, cold); pytest-timeout counts
    # fixture setup against it. Only when nothing is cached.
    pytestmark.append(pytest.mark.timeout(3600))

# --- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def xds_binary() -> Path:
    """The xds-testserver binary: cached, or built now; skipped only when it cannot exist."""
    if _CACHED is not None:
        return _CACHED
    if not can_build():
        pytest.skip(
            "xds-testserver is built from source and 'go' is not on PATH "
            "(install Go, or run `make xds-server` where Go is available)"
        )
    return build_binary()


@dataclass
class Mesh:
    """A meshed pod in a box, its control plane and the service's endpoints."""

    box: Box
    pod: dict[str, Any]
    xds: XdsServer
    vip: str
    endpoints: dict[str, HostHTTPServer]

    def push(self, version: str, weights: dict[str, int], *extra_listeners: dict[str, Any]) -> None:
        self.xds.set_snapshot(
            snapshot(version, self.vip, self.box.host_ip, weights, extra_listeners)
        )

    def call(self) -> str:
        """One request from the app to the service's VIP; the name of the endpoint that answered."""
        status, body = self.box.get_as_app(f"http://{self.vip}:{SERVICE_PORT}/")
        assert status == 200, body
        name, peer = body.split()
        # The endpoint sees the proxy's connection, made from the pod IP.
        assert peer == self.box.pod_ip
        return name

    def calls(self, count: int) -> dict[str, int]:
        """``count`` requests, one connection each: how many each endpoint answered."""
        seen: dict[str, int] = {}
        for line in self.box.get_many_as_app(f"http://{self.vip}:{SERVICE_PORT}/", count):
            status, name, peer = line.split()
            assert (status, peer) == ("200", self.box.pod_ip), line
            seen[name] = seen.get(name, 0) + 1
        return seen

    def stat(self, name: str) -> int:
        return self.box.stats().get(name, 0)

    def wait_stat(self, name: str, check: Callable[[int], bool], *, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        value = self.stat(name)
        while not check(value):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{name} = {value} after {timeout}s:\n{self.box.envoy_log()[-2000:]}"
                )
            time.sleep(0.2)
            value = self.stat(name)
        return value


@pytest.fixture
def mesh(tmp_path: Path, xds_binary: Path) -> Iterator[Mesh]:
    """Snapshot 1 (all traffic to ``a``) is set before the proxy starts, as a control plane would."""
    with meshed(tmp_path, xds_binary) as world:
        yield world


@contextlib.contextmanager
def meshed(
    tmp_path: Path,
    xds_binary: Path,
    annotations: dict[str, str] | None = None,
    *,
    config: str | None = None,
) -> Iterator[Mesh]:
    """A meshed pod with its control plane and endpoints (``mesh``, with pod annotations and config)."""
    endpoints: dict[str, HostHTTPServer] = {}
    with pod_box() as box:
        xds = XdsServer(xds_binary, f"{box.host_ip}:{XDS_PORT}", tmp_path / "xds.log")
        try:
            for name, port in ENDPOINT_PORTS.items():
                endpoints[name] = HostHTTPServer(box.host_ip, port, name)
            xds.start()
            pod = inject_pod(
                tmp_path,
                {P + "xds-address": xds.xds_address, **(annotations or {})},
                config=config,
            )
            world = Mesh(box, pod, xds, box.add_mesh_only_address(), endpoints)
            world.push("1", {"a": 100, "b": 0})
            box.run_init(pod, container(pod, "mesh-init"))
            box.start_app_server(SERVICE_PORT)
            box.start_proxy(pod, container(pod, "mesh-proxy"))
            box.wait_ready(timeout=60)
            yield world
        finally:
            xds.stop()
            for server in endpoints.values():
                server.close()


def _section(dump: dict[str, Any], kind: str) -> dict[str, Any]:
    """The config_dump section whose @type ends with ``kind`` (e.g. ListenersConfigDump)."""
    for section in dump["configs"]:
        if section["@type"].endswith("." + kind):
            found: dict[str, Any] = section
            return found
    raise AssertionError(f"no {kind} in config_dump")


def _static_listener(dump: dict[str, Any], name: str) -> dict[str, Any]:
    for item in _section(dump, "ListenersConfigDump")["static_listeners"]:
        if item["listener"]["name"] == name:
            found: dict[str, Any] = item["listener"]
            return found
    raise AssertionError(f"no static listener {name}")


# --- the tests ----------------------------------------------------------------------


def test_proxy_identifies_itself_and_acks_every_resource_type(mesh: Mesh) -> None:
    # The server's view: one node, named from the pod's downward-API values,
    # over one ADS stream, every type ACKed at version 1, nothing NACKed.
    node = mesh.xds.wait_acked(NODE_ID, "1")
    state = mesh.xds.state()
    assert set(state["nodes"]) == {NODE_ID}
    assert node["cluster"] == NODE_CLUSTER
    assert node["user_agent"] == "envoy"
    assert (node["streams_open"], node["streams_total"]) == (1, 1)
    for type_url in ALL_TYPES:
        assert node["types"][type_url]["sent"] == "1"
        assert node["types"][type_url]["nacks"] == []

    # Envoy's view: the same identity, and each resource at version 1.
    dump = mesh.box.config_dump()
    bootstrap = _section(dump, "BootstrapConfigDump")["bootstrap"]
    assert bootstrap["node"]["id"] == NODE_ID
    assert bootstrap["node"]["cluster"] == NODE_CLUSTER
    listeners = _section(dump, "ListenersConfigDump")
    static_names = {item["listener"]["name"] for item in listeners["static_listeners"]}
    assert {"outbound", "inbound", "health"} <= static_names
    [dynamic] = listeners["dynamic_listeners"]
    assert dynamic["name"] == "shop"
    assert dynamic["active_state"]["version_info"] == "1"
    assert dynamic["active_state"]["listener"]["bind_to_port"] is False
    assert listeners["version_info"] == "1"
    [route] = _section(dump, "RoutesConfigDump")["dynamic_route_configs"]
    assert route["version_info"] == "1"
    assert route["route_config"]["name"] == "shop"
    clusters = _section(dump, "ClustersConfigDump")
    assert clusters["version_info"] == "1"
    assert {
        c["cluster"]["name"]: c["version_info"] for c in clusters["dynamic_active_clusters"]
    } == {
        "svc-a": "1",
        "svc-b": "1",
    }
    endpoints = {
        item["endpoint_config"]["cluster_name"]: item
        for item in _section(dump, "EndpointsConfigDump")["dynamic_endpoint_configs"]
    }
    assert set(endpoints) == {"svc-a", "svc-b"}
    for name, port in ENDPOINT_PORTS.items():
        # Envoy's dump leaves EDS versions out; the server's ACKs above cover them.
        item = endpoints[f"svc-{name}"]
        [group] = item["endpoint_config"]["endpoints"]
        [lb_endpoint] = group["lb_endpoints"]
        address = lb_endpoint["endpoint"]["address"]["socket_address"]
        assert (address["address"], address["port_value"]) == (mesh.box.host_ip, port)

    # Over gRPC on HTTP/2, and connected.
    stats = mesh.box.stats()
    assert stats["cluster.xds_cluster.upstream_cx_http2_total"] == 1
    assert stats["control_plane.connected_state"] == 1


def test_mesh_only_address_is_served_through_lds_rds_cds_eds(mesh: Mesh) -> None:
    box = mesh.box
    before = box.stats()
    redirected = box.redirected_to(15001)

    # Nothing listens on the VIP; the app's connection is redirected to 15001,
    # handed to the pushed listener, routed to svc-a, sent to its endpoint.
    assert mesh.call() == "a"
    assert box.redirected_to(15001) == redirected + 1
    after = box.stats()
    assert (
        after["listener.shop.downstream_cx_total"]
        == before.get("listener.shop.downstream_cx_total", 0) + 1
    )
    assert (
        after["http.shop.downstream_rq_total"] == before.get("http.shop.downstream_rq_total", 0) + 1
    )
    assert (
        after["cluster.svc-a.upstream_rq_total"]
        == before.get("cluster.svc-a.upstream_rq_total", 0) + 1
    )
    assert after.get("cluster.svc-b.upstream_rq_total", 0) == 0
    assert mesh.endpoints["a"].hits == 1
    assert mesh.endpoints["b"].hits == 0
    # Handed over, not passed through: the static listener's passthrough is untouched.
    for name in (
        "listener.outbound.downstream_cx_total",
        "cluster.outbound_passthrough.upstream_cx_total",
    ):
        assert after.get(name, 0) == before.get(name, 0), name

    # The static listeners keep working beside the dynamic one. An address the
    # mesh does not know still passes through to where it was going.
    upstream = HostServer(box.host_ip, UPSTREAM_PORT)
    try:
        stats = box.stats()
        assert box.connect_as_app(box.host_ip, UPSTREAM_PORT).split()[0] == box.pod_ip
        assert upstream.peers == [box.pod_ip]
        assert box.stats()["cluster.outbound_passthrough.upstream_cx_total"] == (
            stats.get("cluster.outbound_passthrough.upstream_cx_total", 0) + 1
        )
    finally:
        upstream.close()
    # Inbound to the app's port, the VIP listener's port number too: the VIP
    # listener matches its own address only, so this reaches the app.
    stats = box.stats()
    assert connect_from_host(box.pod_ip, SERVICE_PORT).split()[0] == box.pod_ip
    after = box.stats()
    assert (
        after["listener.inbound.downstream_cx_total"]
        == stats["listener.inbound.downstream_cx_total"] + 1
    )
    assert after["listener.shop.downstream_cx_total"] == stats["listener.shop.downstream_cx_total"]


def test_new_snapshot_shifts_route_weights_without_restarting_anything(mesh: Mesh) -> None:
    mesh.xds.wait_acked(NODE_ID, "1")
    proxy = mesh.box.proxy
    assert proxy is not None
    assert mesh.calls(5) == {"a": 5}
    before = mesh.box.stats()

    mesh.push("2", {"a": 0, "b": 100})
    mesh.xds.wait_acked(NODE_ID, "2")
    assert mesh.calls(5) == {"b": 5}

    # Half and half: 40 requests all landing on one side has odds of 2^-39.
    mesh.push("3", {"a": 50, "b": 50})
    mesh.xds.wait_acked(NODE_ID, "3")
    split = mesh.calls(40)
    assert set(split) == {"a", "b"}, split

    # Same Envoy process; only the route changed: no listener or cluster was
    # rebuilt or drained, and the ADS stream never dropped.
    assert proxy.poll() is None
    after = mesh.box.stats()
    for name in (
        "listener_manager.listener_modified",
        "listener_manager.listener_removed",
        "listener_manager.total_listeners_draining",
        "cluster_manager.cluster_modified",
        "cluster_manager.cluster_removed",
        "cluster.xds_cluster.upstream_cx_total",
    ):
        assert after.get(name, 0) == before.get(name, 0), name
    assert (
        after["http.shop.rds.shop.update_success"]
        == before["http.shop.rds.shop.update_success"] + 2
    )
    node = mesh.xds.node(NODE_ID)
    assert node is not None
    assert node["streams_total"] == 1


def test_last_configuration_serves_without_control_plane_and_proxy_reconnects(mesh: Mesh) -> None:
    mesh.xds.wait_acked(NODE_ID, "1")
    mesh.push("2", {"a": 0, "b": 100})
    mesh.xds.wait_acked(NODE_ID, "2")

    mesh.xds.stop()
    mesh.wait_stat("control_plane.connected_state", lambda v: v == 0, timeout=30)
    # Without it: the last configuration keeps serving, new connections included,
    # and the pod stays ready.
    assert mesh.calls(3) == {"b": 3}
    assert http_get(f"http://{mesh.box.pod_ip}:15021/healthz/ready")[0] == 200

    # Back on the same address, with nothing in it yet: the proxy comes back
    # on its own, with its identity, and takes the new server's configuration.
    mesh.xds.start()
    mesh.xds.wait_for(
        "the proxy reconnecting",
        lambda state: state["nodes"].get(NODE_ID, {}).get("streams_open") == 1,
        timeout=RECONNECT_TIMEOUT,
    )
    node = mesh.xds.node(NODE_ID)
    assert node is not None
    assert node["cluster"] == NODE_CLUSTER
    mesh.push("3", {"a": 100, "b": 0})
    mesh.xds.wait_acked(NODE_ID, "3")
    mesh.wait_stat("control_plane.connected_state", lambda v: v == 1, timeout=30)
    assert mesh.calls(3) == {"a": 3}


def test_bad_listeners_are_refused_and_the_last_good_config_keeps_serving(mesh: Mesh) -> None:
    mesh.xds.wait_acked(NODE_ID, "1")
    # Version 2 adds a listener Envoy's validation refuses (port over 65535):
    # LDS is NACKed with Envoy's reason, the other types are taken.
    mesh.push("2", {"a": 0, "b": 100}, bad_listener(mesh.vip, "bad-port", 70000))
    mesh.xds.wait_acked(NODE_ID, "2", [ROUTE, CLUSTER, ENDPOINT])
    node = mesh.xds.wait_for(
        "an LDS NACK",
        lambda state: state["nodes"][NODE_ID]["types"][LISTENER]["nacks"] != [],
    )["nodes"][NODE_ID]
    [nack] = node["types"][LISTENER]["nacks"]
    assert nack["version"] == "2"
    assert "bad-port" in nack["error"]
    assert "65535" in nack["error"]
    assert node["types"][LISTENER]["acked"] == "1"
    assert mesh.stat("listener_manager.lds.update_rejected") == 1
    # The listener from version 1 still works, with the route from version 2.
    assert mesh.calls(2) == {"b": 2}

    # A dynamic listener under a static listener's name is no error to Envoy:
    # ACKed, and ignored. The static one stays as the bootstrap made it.
    static_before = _static_listener(mesh.box.config_dump(), "outbound")
    mesh.push("3", {"a": 100, "b": 0}, bad_listener(mesh.vip, "outbound", 9999))
    node = mesh.xds.wait_acked(NODE_ID, "3")
    # The NACKed version 2 was not pushed again and again meanwhile.
    assert len(node["types"][LISTENER]["nacks"]) == 1
    assert mesh.stat("listener_manager.lds.update_rejected") == 1
    dump = mesh.box.config_dump()
    assert _static_listener(dump, "outbound") == static_before
    listeners = _section(dump, "ListenersConfigDump")["dynamic_listeners"]
    assert [item["name"] for item in listeners] == ["shop"]
    assert mesh.calls(2) == {"a": 2}


def test_classic_drain_waits_for_a_connection_an_xds_listener_holds_until_the_app_closes_it(
    tmp_path: Path, xds_binary: Path
) -> None:
    # Classic mode: Envoy gets SIGTERM when the preStop hook returns, so the
    # hook must see the connection the pushed listener holds. The redirect
    # reaches 15001, which hands the connection to "shop" by its original
    # destination: it is counted under "shop", not "outbound".
    classic = {P + "native-sidecar": "false"}
    with meshed(tmp_path, xds_binary, classic, config="proxy:\n  drainSeconds: 300\n") as mesh:
        box = mesh.box
        mesh.xds.wait_acked(NODE_ID, "1")
        app = box.hold_as_app(mesh.vip, SERVICE_PORT)
        assert next_line(app) == f"200 a {box.pod_ip}"
        mesh.wait_stat("listener.shop.downstream_cx_active", lambda v: v == 1, timeout=30)
        assert mesh.stat("listener.outbound.downstream_cx_active") == 0
        # A scraper's kept-alive connection to the health listener must not hold the drain.
        scrape = http.client.HTTPConnection(box.pod_ip, 15090, timeout=30)
        scrape.request("GET", "/stats/prometheus")
        assert scrape.getresponse().read()

        hook = box.start_hook(mesh.pod, "preStop")
        box.wait_for_hook_polls(hook, 3)
        assert hook.poll() is None, "the hook must wait for the connection through 'shop'"
        assert mesh.stat("listener.health.downstream_cx_active") == 1  # named, so left out
        # The health listener keeps answering while the proxy drains (the last scrape works).
        scrape.request("GET", "/stats/prometheus")
        assert scrape.getresponse().status == 200
        assert http_get(f"http://{box.pod_ip}:15021/healthz/ready")[0] == 200

        app.send_signal(signal.SIGUSR1)  # the app makes its last request, then closes
        assert next_line(app) == f"200 a {box.pod_ip}"
        assert next_line(app) == "closed"
        assert hook.wait(timeout=60) == 0, "the hook returns once the app's connection is closed"
        scrape.close()
        assert box.proxy is not None
        box.proxy.send_signal(signal.SIGTERM)  # what the kubelet does next
        assert box.proxy.wait(timeout=60) == 0


def next_line(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    """The next line a process prints, waiting at most ``timeout``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line before the deadline"
    return proc.stdout.readline().strip()


def test_pod_without_xds_address_is_a_plain_transparent_proxy(tmp_path: Path) -> None:
    pod = inject_pod(tmp_path, {})
    proxy = container(pod, "mesh-proxy")
    assert "dynamic_resources" not in " ".join(proxy["args"])
    upstream: HostServer | None = None
    with pod_box() as box:
        try:
            box.run_init(pod, container(pod, "mesh-init"))
            box.start_app_server(SERVICE_PORT)
            box.start_proxy(pod, proxy)
            box.wait_ready()
            upstream = HostServer(box.host_ip, UPSTREAM_PORT)

            # No control plane anywhere in its configuration or its stats.
            dump = box.config_dump()
            assert "dynamic_resources" not in _section(dump, "BootstrapConfigDump")["bootstrap"]
            assert "dynamic_listeners" not in _section(dump, "ListenersConfigDump")
            assert "dynamic_active_clusters" not in _section(dump, "ClustersConfigDump")
            stats = box.stats()
            assert not [
                name for name in stats if "xds_cluster" in name or name.startswith("control_plane.")
            ]

            # Both directions pass through to where they were going.
            assert box.connect_as_app(box.host_ip, UPSTREAM_PORT).split()[0] == box.pod_ip
            assert upstream.peers == [box.pod_ip]
            assert connect_from_host(box.pod_ip, SERVICE_PORT).split()[0] == box.pod_ip
            after = box.stats()
            for name in (
                "listener.outbound.downstream_cx_total",
                "listener.inbound.downstream_cx_total",
            ):
                assert after[name] == stats[name] + 1, name

            # A mesh-only address means nothing here: the passthrough tries the
            # VIP itself, finds no one, and the app's connection is closed.
            vip = box.add_mesh_only_address()
            with pytest.raises(ConnectionError):
                box.get_as_app(f"http://{vip}:{SERVICE_PORT}/")
        finally:
            if upstream is not None:
                upstream.close()


def test_control_interface_refuses_bad_snapshots(tmp_path: Path, xds_binary: Path) -> None:
    # The server alone, on loopback: what a test's mistake gets back.
    xds = XdsServer(xds_binary, "127.0.0.1:0", tmp_path / "xds.log")
    xds.start()
    try:
        good = snapshot("1", "198.18.0.1", "198.18.0.2", {"a": 1, "b": 1})
        assert xds.put_snapshot(good) == (200, {"version": "1"})
        missing_route = {**good, "version": "2", "routes": []}
        status, answer = xds.put_snapshot(missing_route)
        assert status == 400
        assert "not consistent" in answer["error"]
        typo = {**good, "version": "3", "clusters": [{"name": "x", "conect_timeout": "1s"}]}
        status, answer = xds.put_snapshot(typo)
        assert status == 400
        assert answer["error"].startswith("clusters[0]")
        assert xds.put_snapshot({"version": "4"})[0] == 400
        assert xds.state()["snapshots"] == {NODE_ID: "1"}
    finally:
        xds.stop()


def test_nothing_is_left_behind() -> None:
    # Runs last in this module: every box and server above has been stopped.
    assert own_leftovers() == []
