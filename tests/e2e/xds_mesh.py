"""What the xDS tests push and inject: the pod, its proxy's bootstrap, and the mesh's resources."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

P = "sidecar.mesh.io/"
CLI = Path(sys.executable).parent / "sidecar-injector"
XDS_PORT = 15010
SERVICE_PORT = 8080  # the VIP's port, and the app's: the VIP listener must not take inbound
UPSTREAM_PORT = 8081  # a plain host server outside the mesh
ENDPOINT_PORTS = {"a": 18081, "b": 18082}
POD, NAMESPACE, ACCOUNT = "shop-5d4f", "demo", "shop"
NODE_ID = f"{POD}.{NAMESPACE}"  # what the bootstrap makes of the downward-API values
NODE_CLUSTER = f"{ACCOUNT}.{NAMESPACE}"
ADS: dict[str, Any] = {"ads": {}, "resource_api_version": "V3"}
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

# Generous: Envoy retries a lost ADS stream with backoff up to 30 s.
RECONNECT_TIMEOUT = 90


def inject_pod(
    tmp_path: Path, annotations: dict[str, str], *, config: str | None = None
) -> dict[str, Any]:
    """The pod as ``sidecar-injector inject -o json`` returns it for an opted-in namespace."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD, "namespace": NAMESPACE, "annotations": annotations},
        "spec": {
            "serviceAccountName": ACCOUNT,
            "containers": [{"name": "app", "image": "example.test/shop:1"}],
        },
    }
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(pod))
    options: list[str] = []
    if config is not None:
        (tmp_path / "config.yaml").write_text(config)
        options = ["--config", str(tmp_path / "config.yaml")]
    result = subprocess.run(
        [str(CLI), "inject", "-f", str(manifest), "--namespace", NAMESPACE,
         "--label", "sidecar-injection=enabled", "-o", "json", *options],
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


# --- the mesh the control plane pushes ----------------------------------------------


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def service_listener(vip: str) -> dict[str, Any]:
    """Like Istio's per-service outbound listeners: not bound, found by original destination."""
    return {
        "name": "shop",
        "stat_prefix": "shop",
        "address": _address(vip, SERVICE_PORT),
        "bind_to_port": False,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": "shop",
                            "rds": {"route_config_name": "shop", "config_source": ADS},
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


def service_route(weights: dict[str, int]) -> dict[str, Any]:
    clusters = [{"name": f"svc-{name}", "weight": weight} for name, weight in weights.items()]
    return {
        "name": "shop",
        "virtual_hosts": [
            {
                "name": "shop",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "route": {"weighted_clusters": {"clusters": clusters}},
                    }
                ],
            }
        ],
    }


def bad_listener(vip: str, name: str, port: int) -> dict[str, Any]:
    """A plain TCP listener for the tests of what Envoy refuses or ignores."""
    return {
        "name": name,
        "address": _address(vip, port),
        "bind_to_port": False,
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": TCP_PROXY,
                            "stat_prefix": name,
                            "cluster": "svc-a",
                        },
                    }
                ]
            }
        ],
    }


def snapshot(
    version: str,
    vip: str,
    host_ip: str,
    weights: dict[str, int],
    extra_listeners: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    return {
        "node": NODE_ID,
        "version": version,
        "listeners": [service_listener(vip), *extra_listeners],
        "routes": [service_route(weights)],
        "clusters": [
            {
                "name": f"svc-{name}",
                "type": "EDS",
                "connect_timeout": "1s",
                "eds_cluster_config": {"eds_config": ADS},
            }
            for name in ENDPOINT_PORTS
        ],
        "endpoints": [
            {
                "cluster_name": f"svc-{name}",
                "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": _address(host_ip, port)}}]}
                ],
            }
            for name, port in ENDPOINT_PORTS.items()
        ],
    }
