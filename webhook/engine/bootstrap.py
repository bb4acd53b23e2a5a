"""The Envoy bootstrap the ``mesh-proxy`` container carries inline (``--config-yaml``).

Rendered as indented JSON: JSON is YAML, so Envoy reads it as is, and unlike
YAML it has exactly one reading, whatever ends up inside a string. The
``$(POD_NAME)``-style references are left for the kubelet to expand from the
container's downward-API environment, so the bootstrap itself is the same for
every pod with the same settings.

What the proxy does without a control plane, and why each piece is there:

* ``outbound`` on 0.0.0.0:15001 and ``inbound`` on 0.0.0.0:15006 receive the
  connections iptables redirects; ``use_original_dst`` recovers where each
  was going, and a TCP proxy forwards it there (ORIGINAL_DST passthrough).
  Both also listen on [::] (``additional_addresses``: a second, IPv6-only
  socket) for what ip6tables redirects. Not one dual-stack ``::`` socket with
  ``ipv4_compat``: that works for the passthrough too (tested), but IPv4
  connections then carry IPv4-mapped addresses, and the hand-off by original
  destination that xDS listeners rely on looks listeners up per family
  (``0.0.0.0:port`` for IPv4, ``[::]:port`` for IPv6). With ``ipv6: false`` in
  the injector config the [::] sockets are left out: Envoy refuses a bootstrap
  naming any IPv6 address on a kernel without IPv6 ("malformed IP address"). The
  inbound passthrough connects from the pod IP to the pod IP, so the app sees
  the pod's own address as the peer: plain, and unmistakable in app logs, with
  no special source address (Istio's 127.0.0.6) to exempt in the rules. The
  proxy's connections are UID-exempt from redirection, so they cannot loop.
* A connection aimed straight at 15001 or 15006 (not redirected) would have
  the listener itself as its original destination and forward to itself
  without end; a filter chain for that port sends it to an empty cluster.
* 15021 (``/healthz/ready``) and 15090 (``/stats/prometheus``) forward to the
  admin endpoints ``/ready`` and ``/stats/prometheus`` on 127.0.0.1:15000, so
  readiness is Envoy's own (503 while initialising or draining) and nothing
  else of the admin API is exposed. They bind to the pod IP rather than
  0.0.0.0: with ``use_original_dst``, a connection to *any* host's port 15021 or
  15090 would otherwise be handed to these wildcard listeners instead of
  leaving the pod (Envoy looks up the original destination exactly, then the
  wildcard of its family). The pod IP is ``status.podIP``: the pod's primary
  address, IPv4 or IPv6, which is where the kubelet probes and Prometheus'
  pod discovery scrapes. On a dual-stack pod the secondary family's address
  does not answer on these two ports: a container cannot know it (the downward
  API gives only the comma-joined ``status.podIPs``), and a [::] wildcard would
  capture the app's IPv6 connections to other pods' 15021/15090.
* With ``xds_address`` set, listeners and clusters also come over ADS (gRPC,
  v3) from ``xds_cluster``, an HTTP/2 cluster pointing at that address.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Final

import orjson

from webhook import constants
from webhook.config import InjectorConfig
from webhook.settings import ProxySettings

ADMIN_CLUSTER: Final = "admin"
INBOUND_PASSTHROUGH: Final = "inbound_passthrough"
OUTBOUND_PASSTHROUGH: Final = "outbound_passthrough"
BLACKHOLE: Final = "blackhole"
XDS_CLUSTER: Final = "xds_cluster"

# Listener stat prefixes: ``listener.<prefix>.downstream_cx_total`` in /stats.
INBOUND_STATS: Final = "inbound"
OUTBOUND_STATS: Final = "outbound"

_TCP_PROXY: Final = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_HCM: Final = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_ROUTER: Final = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HTTP_OPTIONS: Final = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _tcp_proxy(stat_prefix: str, cluster: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": _TCP_PROXY, "stat_prefix": stat_prefix, "cluster": cluster},
    }


def _transparent_listener(
    name: str, port: int, passthrough: str, direction: str, *, ipv6: bool
) -> dict[str, Any]:
    listener: dict[str, Any] = {
        "name": name,
        "stat_prefix": name,
        # What /drain_listeners?inboundonly goes by (the preStop hook, proxy.py).
        "traffic_direction": direction,
        "address": _address("0.0.0.0", port),  # noqa: S104 - redirected traffic arrives on any address
    }
    if ipv6:
        listener["additional_addresses"] = [{"address": _address("::", port)}]
    return listener | {
        "use_original_dst": True,
        "filter_chains": [
            {
                # Aimed at this port itself: forwarding would loop, so drop it.
                "filter_chain_match": {"destination_port": port},
                "filters": [_tcp_proxy(f"{name}_loop", BLACKHOLE)],
            }
        ],
        "default_filter_chain": {"filters": [_tcp_proxy(name, passthrough)]},
    }


def _admin_route_listener(name: str, port: int, path: str, admin_path: str) -> dict[str, Any]:
    """An HTTP listener exposing exactly one admin endpoint under ``path``."""
    route: dict[str, Any] = {"cluster": ADMIN_CLUSTER}
    if admin_path != path:
        route["prefix_rewrite"] = admin_path
    return {
        "name": name,
        "address": _address("$(POD_IP)", port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _HCM,
                            "stat_prefix": name,
                            "codec_type": "AUTO",
                            "route_config": {
                                "name": name,
                                "virtual_hosts": [
                                    {
                                        "name": name,
                                        "domains": ["*"],
                                        "routes": [{"match": {"path": path}, "route": route}],
                                    }
                                ],
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": _ROUTER},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


def _static_cluster(name: str, host: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(host, port)}}]}],
        },
    }


def _passthrough_cluster(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "10s",
    }


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (host a name, IPv4 or ``[IPv6]``) -> (host without brackets, port)."""
    host, _, port = address.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _xds_cluster(address: str) -> dict[str, Any]:
    host, port = split_address(address)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        is_ip = False
    else:
        is_ip = True
    cluster = _static_cluster(XDS_CLUSTER, host, port)
    cluster["connect_timeout"] = "5s"
    if not is_ip:
        # A Service name: keep re-resolving, so the proxy follows the control plane.
        cluster["type"] = "STRICT_DNS"
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    # gRPC needs HTTP/2 to the control plane.
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _HTTP_OPTIONS,
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return cluster


def bootstrap_config(settings: ProxySettings, config: InjectorConfig) -> dict[str, Any]:
    """The bootstrap as a plain dict (``render_bootstrap`` serialises it)."""
    clusters = [
        _passthrough_cluster(OUTBOUND_PASSTHROUGH),
        _passthrough_cluster(INBOUND_PASSTHROUGH),
        # No endpoints: a connection sent here is closed at once.
        {"name": BLACKHOLE, "type": "STATIC", "connect_timeout": "1s"},
        _static_cluster(ADMIN_CLUSTER, "127.0.0.1", constants.ADMIN_PORT),
    ]
    bootstrap: dict[str, Any] = {
        "node": {
            "id": "$(POD_NAME).$(POD_NAMESPACE)",
            "cluster": "$(SERVICE_ACCOUNT).$(POD_NAMESPACE)",
        },
        "admin": {"address": _address("127.0.0.1", constants.ADMIN_PORT)},
        "static_resources": {
            "listeners": [
                _transparent_listener(
                    OUTBOUND_STATS,
                    constants.OUTBOUND_PORT,
                    OUTBOUND_PASSTHROUGH,
                    "OUTBOUND",
                    ipv6=config.ipv6,
                ),
                _transparent_listener(
                    INBOUND_STATS,
                    constants.INBOUND_PORT,
                    INBOUND_PASSTHROUGH,
                    "INBOUND",
                    ipv6=config.ipv6,
                ),
                _admin_route_listener(
                    "health", constants.HEALTH_PORT, constants.HEALTH_PATH, "/ready"
                ),
                _admin_route_listener(
                    "prometheus",
                    constants.PROMETHEUS_PORT,
                    constants.PROMETHEUS_PATH,
                    constants.PROMETHEUS_PATH,
                ),
            ],
            "clusters": clusters,
        },
    }
    if settings.xds_address is not None:
        clusters.append(_xds_cluster(settings.xds_address))
        ads_source = {"ads": {}, "resource_api_version": "V3"}
        bootstrap["dynamic_resources"] = {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
            "lds_config": ads_source,
            "cds_config": ads_source,
        }
    return bootstrap


def render_bootstrap(settings: ProxySettings, config: InjectorConfig) -> str:
    """The bootstrap text for ``--config-yaml``: deterministic, indented JSON.

    orjson, not ``json.dumps(indent=2)``: with ``indent`` the standard library
    falls back to its pure-Python encoder, which made this one call ~85% of the
    engine's cost per pod (280 us of ~330 us, ``make bench``). The text is
    byte-identical for the bootstrap's plain str/int/bool/list/dict content.
    """
    return orjson.dumps(bootstrap_config(settings, config), option=orjson.OPT_INDENT_2).decode()
