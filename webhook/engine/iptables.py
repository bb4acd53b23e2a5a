"""The ``mesh-init`` container: netfilter rules that steer the pod's TCP through the proxy.

The rules are rendered here as ``iptables-restore`` input and written verbatim
into the container's ``sh -c`` script, so a preview shows exactly what will run
and a golden file diffs it. Output is deterministic: ports are sorted, CIDRs
keep the order the user gave (they were de-duplicated when parsed).

Decisions worth knowing (the README repeats them for users):

* Inbound: TCP arriving at the pod (PREROUTING) goes to the proxy's inbound
  port, except the excluded ports and the proxy's own ports, which must stay
  reachable directly (kubelet probes 15021, Prometheus scrapes 15090). With an
  include list only those ports are redirected; an empty list redirects none.
* Outbound: TCP the pod opens (OUTPUT) goes to the proxy's outbound port,
  except the proxy UID's own connections (without that exemption the proxy's
  upstream connections would be redirected back to itself forever), loopback,
  excluded ports and excluded CIDRs; an include-CIDR list limits redirection to
  those destinations.
* Loopback: connections to 127.0.0.0/8 never leave the pod and bypass the
  proxy. A connection from the app to its own pod IP also leaves through
  ``lo``; it is a connection *into* the pod, so it gets the inbound treatment
  (the same port rules as traffic from outside) instead of the outbound one.
  It cannot loop: the proxy's passthrough connection to the app is UID-exempt.
* IPv6 is left alone: only ``iptables`` (IPv4) rules are written, IPv6 CIDRs in
  the include/exclude lists are ignored, and the proxy listens on IPv4 only. On
  a dual-stack or IPv6 pod, IPv6 traffic therefore bypasses the proxy. That is
  stated rather than half-done: intercepting IPv6 needs ``ip6tables`` rules and
  IPv6 listeners together.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Final

from webhook import constants
from webhook.config import InjectorConfig, Resources
from webhook.settings import ProxySettings
from webhook.values import ALL

# Chain names are ours alone, so the rules never touch chains another tool owns.
INBOUND_CHAIN: Final = "MESH_INBOUND"
IN_REDIRECT_CHAIN: Final = "MESH_IN_REDIRECT"
OUTPUT_CHAIN: Final = "MESH_OUTPUT"
REDIRECT_CHAIN: Final = "MESH_REDIRECT"

# iptables-legacy takes a lock file under /run, which is read-only here
# (readOnlyRootFilesystem); /dev/shm is a tmpfs in every container. The
# nf_tables backend (the image's default) takes no lock and ignores this.
XTABLES_LOCKFILE: Final = "/dev/shm/xtables.lock"  # noqa: S108 - the pod's own tmpfs


def _ipv4(cidrs: tuple[str, ...]) -> list[str]:
    return [cidr for cidr in cidrs if ipaddress.ip_network(cidr).version == 4]


def _inbound_rules(settings: ProxySettings) -> list[str]:
    """MESH_INBOUND: decide per destination port whether the proxy sees the connection."""
    never = sorted(set(constants.PROXY_PORTS) | set(settings.exclude_inbound_ports))
    if settings.include_inbound_ports == ALL:
        rules = [f"-A {INBOUND_CHAIN} -p tcp --dport {port} -j RETURN" for port in never]
        rules.append(f"-A {INBOUND_CHAIN} -p tcp -j {IN_REDIRECT_CHAIN}")
        return rules
    ports = sorted(set(settings.include_inbound_ports) - set(never))
    return [f"-A {INBOUND_CHAIN} -p tcp --dport {port} -j {IN_REDIRECT_CHAIN}" for port in ports]


def _outbound_rules(settings: ProxySettings, *, proxy_uid: int) -> list[str]:
    """MESH_OUTPUT: first match wins, so the exemptions come before any redirect."""
    rules = [
        f"-A {OUTPUT_CHAIN} -m owner --uid-owner {proxy_uid} -j RETURN",
        f"-A {OUTPUT_CHAIN} -o lo -d 127.0.0.0/8 -j RETURN",
        # The app calling its own pod IP: inbound port rules apply, and what
        # they do not redirect goes straight to the app, never to 15001.
        f"-A {OUTPUT_CHAIN} -o lo -j {INBOUND_CHAIN}",
        f"-A {OUTPUT_CHAIN} -o lo -j RETURN",
    ]
    rules += [
        f"-A {OUTPUT_CHAIN} -p tcp --dport {port} -j RETURN"
        for port in sorted(settings.exclude_outbound_ports)
    ]
    rules += [
        f"-A {OUTPUT_CHAIN} -d {cidr} -j RETURN" for cidr in _ipv4(settings.exclude_outbound_cidrs)
    ]
    if settings.include_outbound_cidrs == ALL:
        rules.append(f"-A {OUTPUT_CHAIN} -j {REDIRECT_CHAIN}")
    else:
        rules += [
            f"-A {OUTPUT_CHAIN} -d {cidr} -j {REDIRECT_CHAIN}"
            for cidr in _ipv4(settings.include_outbound_cidrs)
        ]
    return rules


def render_rules(settings: ProxySettings, *, proxy_uid: int) -> str:
    """The nat table additions as ``iptables-restore --noflush`` input (IPv4 only).

    Only our own chains are declared (declaring a built-in chain would reset its
    policy); the built-in PREROUTING and OUTPUT chains just get one jump each.
    """
    lines = [
        "*nat",
        f":{INBOUND_CHAIN} - [0:0]",
        f":{IN_REDIRECT_CHAIN} - [0:0]",
        f":{OUTPUT_CHAIN} - [0:0]",
        f":{REDIRECT_CHAIN} - [0:0]",
        f"-A {IN_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {constants.INBOUND_PORT}",
        f"-A {REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {constants.OUTBOUND_PORT}",
        *_inbound_rules(settings),
        *_outbound_rules(settings, proxy_uid=proxy_uid),
        f"-A PREROUTING -p tcp -j {INBOUND_CHAIN}",
        f"-A OUTPUT -p tcp -j {OUTPUT_CHAIN}",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def render_script(settings: ProxySettings, *, proxy_uid: int) -> str:
    """The init container's shell script: apply the rules, then print the table.

    ``set -eu`` makes a rejected rule fail the container (and so the pod)
    rather than leave it half-meshed; the quoted heredoc keeps the shell from
    expanding anything in the rules. The final ``iptables-save`` puts the rules
    as the kernel holds them in ``kubectl logs -c mesh-init``.
    """
    return (
        "set -eu\n"
        "iptables-restore --noflush <<'EOF'\n"
        f"{render_rules(settings, proxy_uid=proxy_uid)}"
        "EOF\n"
        "iptables-save -t nat\n"
    )


def container_resources(resources: Resources) -> dict[str, dict[str, str]]:
    """Kubernetes ``resources`` from config values; unset values and empty maps are left out."""
    requests = {
        name: value
        for name, value in (("cpu", resources.cpu_request), ("memory", resources.memory_request))
        if value is not None
    }
    limits = {
        name: value
        for name, value in (("cpu", resources.cpu_limit), ("memory", resources.memory_limit))
        if value is not None
    }
    out: dict[str, dict[str, str]] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def mesh_init_container(settings: ProxySettings, config: InjectorConfig) -> dict[str, Any]:
    """The ``mesh-init`` container: root, but only NET_ADMIN and NET_RAW, nothing else.

    Root is needed because netfilter changes require CAP_NET_ADMIN in the
    pod's network namespace; everything else is taken away.
    """
    container: dict[str, Any] = {
        "name": constants.INIT_CONTAINER,
        "image": config.init.image,
        "command": ["sh", "-c", render_script(settings, proxy_uid=config.proxy.uid)],
        "env": [{"name": "XTABLES_LOCKFILE", "value": XTABLES_LOCKFILE}],
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }
    resources = container_resources(config.init.resources)
    if resources:
        container["resources"] = resources
    return container
