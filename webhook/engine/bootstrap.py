"""The Envoy bootstrap the ``mesh-proxy`` container carries inline (``--config-yaml``).

Rendered as compact YAML in flow style (``render_bootstrap``): JSON's
structure, with the quotes left off only where a string cannot be read as
anything else, so it has exactly one reading whatever ends up inside a
string. Fields Envoy defaults to the same value are left out, and filters
are named by their short names: Envoy finds a filter by its ``typed_config``
type, the name is only a label. The
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
* 15021 (``/healthz/ready``) and 15090 (``/stats/prometheus``), one HTTP
  listener (``health``) on both ports, forward to the admin endpoints
  ``/ready`` and ``/stats/prometheus`` on 127.0.0.1:15000, so readiness is
  Envoy's own (503 until it is initialised) and nothing else of the admin
  API is exposed. The preStop hook's listener drain leaves this listener
  open and ready, so a stopping pod's last scrape works. They bind to the pod IP rather than
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
  v3) from ``xds_cluster``, an HTTP/2 cluster pointing at that address; the
  static listeners stay, and a dynamic listener with ``bind_to_port: false``
  receives the redirected connections whose original destination it matches
  (see ``_dynamic_resources`` and docs/xds.md).
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any, Final

from webhook.contract import constants
from webhook.engine.config import InjectorConfig
from webhook.engine.expr import (
    Expr,
    Setting,
    address_host,
    address_port,
    concat,
    if_,
    int_str,
    is_ip,
    is_none,
    yaml_scalar,
)
from webhook.engine.flow_yaml import flow_document, scalar
from webhook.engine.settings import ProxySettings
from webhook.engine.values import split_address

ADMIN_CLUSTER: Final = "admin"
INBOUND_PASSTHROUGH: Final = "inbound_passthrough"
OUTBOUND_PASSTHROUGH: Final = "outbound_passthrough"
BLACKHOLE: Final = "blackhole"
XDS_CLUSTER: Final = "xds_cluster"
HEALTH_LISTENER: Final = "health"

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
        "name": "tcp_proxy",
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


def _admin_routes_listener(routes: dict[int, tuple[str, str]]) -> dict[str, Any]:
    """One HTTP listener on the pod IP exposing exactly these admin endpoints.

    ``routes`` maps each port to (path served, admin path). One listener for
    both ports, not one each: every listener's bytes are in every pod
    (docs/engine.md, "What an injected pod weighs"), and each port may as well
    answer both paths (both are read-only).
    """
    ports = list(routes)
    listener: dict[str, Any] = {
        "name": HEALTH_LISTENER,
        # Named, so the classic preStop hook can leave its connections (kubelet
        # probes, kept-alive scrapes) out of the ones it waits for; unnamed,
        # its stats would go by the pod IP and port.
        "stat_prefix": HEALTH_LISTENER,
        "address": _address("$(POD_IP)", ports[0]),
    }
    if ports[1:]:
        listener["additional_addresses"] = [
            {"address": _address("$(POD_IP)", port)} for port in ports[1:]
        ]
    http_routes = []
    for path, admin_path in routes.values():
        route: dict[str, Any] = {"cluster": ADMIN_CLUSTER}
        if admin_path != path:
            route["prefix_rewrite"] = admin_path
        http_routes.append({"match": {"path": path}, "route": route})
    # codec_type (AUTO) and route_config.name are left to Envoy's defaults.
    hcm = {
        "@type": _HCM,
        "stat_prefix": HEALTH_LISTENER,
        "route_config": {
            "virtual_hosts": [{"name": HEALTH_LISTENER, "domains": ["*"], "routes": http_routes}]
        },
        "http_filters": [{"name": "router", "typed_config": {"@type": _ROUTER}}],
    }
    listener["filter_chains"] = [
        {"filters": [{"name": "http_connection_manager", "typed_config": hcm}]}
    ]
    return listener


def _static_cluster(name: str, host: str, port: int) -> dict[str, Any]:
    # STATIC is the default cluster type; Envoy's default connect timeout (5 s)
    # is moot for 127.0.0.1.
    return {
        "name": name,
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


def _xds_cluster(address: str) -> dict[str, Any]:
    """The cluster the ADS stream runs on: one long-lived gRPC call over HTTP/2.

    * ``connect_timeout`` 5s, Envoy's default, written out so the bound
      on reaching a control plane across the cluster network is stated here
      (the passthrough clusters allow 10 s, the admin cluster the default).
    * Dead-peer detection by TCP keepalive (probe after 60 s idle, every 10 s,
      3 tries: a vanished control plane is noticed within about 90 s and the
      stream re-established, possibly on another replica). Not HTTP/2 PINGs:
      gRPC servers treat pings more often than every 5 minutes as abuse
      (grpc-go's default enforcement answers the third with GOAWAY
      ``too_many_pings``), which pod-in-a-box showed resetting the stream
      every few pings; kernel keepalives are invisible to the server.
    * No HTTP/2 settings beyond the protocol itself: Envoy's defaults (window
      sizes, one connection) suit a single stream, and ``http2_protocol_options``
      is what makes gRPC possible at all.
    """
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
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _HTTP_OPTIONS,
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    cluster["upstream_connection_options"] = {
        "tcp_keepalive": {"keepalive_time": 60, "keepalive_interval": 10, "keepalive_probes": 3}
    }
    return cluster


def _dynamic_resources() -> dict[str, Any]:
    """Listeners and clusters over one ADS stream to ``xds_cluster``.

    * Only LDS and CDS are named here; RDS and EDS are whatever the pushed
      listeners' ``rds.config_source`` and clusters' ``eds_config`` say, and
      the control plane is expected to say ``ads: {}`` (one stream, so it
      can order a cluster before the route that names it).
    * ``V3`` spelled out: Envoy 1.25+ assumes it, but 1.18-1.24 (reachable
      through ``proxy-version``) refuse a config source that leaves it AUTO.
    * ``set_node_on_first_message_only``: the node carries Envoy's whole
      extension list, which would otherwise ride on every ACK and multiply
      the start-up exchange (docs/xds.md, "What the proxy sends").
      go-control-plane, Istio and other ADS servers keep the first message's
      node per stream.
    * ``rate_limit_settings`` at Envoy's defaults (bursts of 100 requests,
      then 10 a second): a control plane that answers a NACK by re-sending the
      same config (go-control-plane's snapshot cache does) otherwise spins
      the proxy at full speed (docs/xds.md, "What it expects").
    * Initial fetch timeouts stay Envoy's (15 s for CDS, then 15 s for LDS):
      with the control plane unreachable the proxy turns ready, serving the
      static listeners, after about 30 s; it neither waits forever (a dead
      control plane would keep every new pod unready) nor starts without
      giving a slow one a chance.
    * Static and dynamic listeners coexist: LDS cannot replace the static
      ones (a pushed listener under one of their names is ACKed and ignored),
      and a dynamic listener with ``bind_to_port: false`` is handed the
      connections that 15001 or 15006 (``use_original_dst``) receive for its
      exact address:port (or 0.0.0.0:port, which then takes inbound traffic
      to that port as well).
    """
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    return {
        "ads_config": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "set_node_on_first_message_only": True,
            "rate_limit_settings": {},
            "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
        },
        "lds_config": ads_source,
        "cds_config": ads_source,
    }


def bootstrap_config(settings: ProxySettings, config: InjectorConfig) -> dict[str, Any]:
    """The bootstrap as a plain dict (``render_bootstrap`` serialises it)."""
    return _bootstrap_config(settings.xds_address, config)


def _bootstrap_config(xds_address: str | None, config: InjectorConfig) -> dict[str, Any]:
    clusters = [
        _passthrough_cluster(OUTBOUND_PASSTHROUGH),
        _passthrough_cluster(INBOUND_PASSTHROUGH),
        # No endpoints: a connection sent here is closed at once.
        {"name": BLACKHOLE},
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
                _admin_routes_listener(
                    {
                        constants.HEALTH_PORT: (constants.HEALTH_PATH, "/ready"),
                        constants.PROMETHEUS_PORT: (
                            constants.PROMETHEUS_PATH,
                            constants.PROMETHEUS_PATH,
                        ),
                    }
                ),
            ],
            "clusters": clusters,
        },
    }
    if xds_address is not None:
        clusters.append(_xds_cluster(xds_address))
        bootstrap["dynamic_resources"] = _dynamic_resources()
    return bootstrap


def render_bootstrap(settings: ProxySettings, config: InjectorConfig) -> str:
    """The bootstrap text for ``--config-yaml``: deterministic, compact flow-style YAML.

    It is stored in every pod and sent to every watcher of it on each status
    update, as a string inside JSON, where each quote costs two more bytes
    (``\\"``). Flow-style YAML with plain scalars is the smallest of the
    spellings tried, both alone and inside the pod's JSON (docs/engine.md,
    "What an injected pod weighs"). Previews show the same text the pod gets.
    """
    return render_bootstrap_for(settings.xds_address, config)


def render_bootstrap_for(xds_address: str | None, config: InjectorConfig) -> str:
    """``render_bootstrap`` for the one setting it reads."""
    return flow_document(_bootstrap_config(xds_address, config))


# Stand-ins for the xDS host and port in ``bootstrap_expr``: each must occur
# once in the rendered text (checked), so the text around them is the template.
_SAMPLE_NAME: Final = "xds.sample.invalid"
_SAMPLE_IP: Final = "192.0.2.1"
_SAMPLE_PORT: Final = 54321


@functools.lru_cache(maxsize=16)
def bootstrap_expr(config: InjectorConfig) -> Expr:
    """The bootstrap text as an expression over ``xds_address`` (``expr``).

    What a pod's settings change in the bootstrap is only the xDS cluster's
    host and port, and whether the host is a name (``STRICT_DNS``) or an
    address: so the text is rendered here, by the same builders, once without
    an xDS server and once per kind of host with stand-ins, and the stand-ins
    become the host's YAML scalar and the port. The engine evaluates this for
    each distinct address (``render_bootstrap_for`` gives the same text: a
    test holds them together), and the policy mode compiles it to CEL. The
    host cannot alias: only strings of 32 characters and more that occur twice
    are aliased (``flow_yaml``), and no other string of the bootstrap is a
    host name or an address. Cached per config (equal configs render alike):
    the three renderings cost more than one build of the containers.
    """
    address = Setting("xds_address")
    host = address_host(address)

    def filled(sample_host: str) -> Expr:
        text = render_bootstrap_for(f"{sample_host}:{_SAMPLE_PORT}", config)
        marker, port = scalar(sample_host), str(_SAMPLE_PORT)
        if text.count(marker) != 1 or text.count(port) != 1:
            raise RuntimeError("the xDS stand-ins are not unique in the bootstrap")
        before, _, rest = text.partition(marker)
        middle, _, after = rest.partition(port)
        return concat(before, yaml_scalar(host), middle, int_str(address_port(address)), after)

    return if_(
        is_none(address),
        render_bootstrap_for(None, config),
        if_(is_ip(host), filled(_SAMPLE_IP), filled(_SAMPLE_NAME)),
    )
