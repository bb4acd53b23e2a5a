"""The ``mesh-init`` container: netfilter rules that steer the pod's TCP through the proxy.

The rules are rendered here as ``iptables-restore`` input and written verbatim
into the container's ``sh -c`` script, so a preview shows exactly what will run
and a golden file diffs it. Output is deterministic: ports are sorted, CIDRs
keep the order the user gave (they were de-duplicated when parsed).

Decisions worth knowing (docs/settings.md repeats them for users):

* Inbound: TCP arriving at the pod (PREROUTING) goes to the proxy's inbound
  port, except the excluded ports and the proxy's own ports, which must stay
  reachable directly (kubelet probes 15021, Prometheus scrapes 15090). With an
  include list only those ports are redirected; an empty list redirects none.
* Outbound: TCP the pod opens (OUTPUT) goes to the proxy's outbound port,
  except the proxy UID's own connections (without that exemption the proxy's
  upstream connections would be redirected back to itself forever), loopback,
  excluded ports and excluded CIDRs; an include-CIDR list limits redirection to
  those destinations.
* Loopback: connections to 127.0.0.0/8 (::1) never leave the pod and bypass
  the proxy. A connection from the app to its own pod IP also leaves through
  ``lo``; it is a connection *into* the pod, so it gets the inbound treatment
  (the same port rules as traffic from outside) instead of the outbound one.
  It cannot loop: the proxy's passthrough connection to the app is UID-exempt.
* IPv4 and IPv6 alike: the same rules go to ``iptables`` and ``ip6tables``.
  They are written once, in a shell function (``nat``) that takes the only
  family-specific parts as arguments: the loopback range and, when the CIDR
  settings name any, that family's CIDR rules. Each CIDR goes to its own
  family's rules. On a kernel without IPv6 (no ``/proc/net/if_inet6``) or
  without an IPv6 nat table the IPv6 half is skipped with a line in the log;
  any other failure, of either half, fails the container (``set -eu``), so a
  pod never runs half-meshed. With ``ipv6: false`` in the injector config the
  IPv6 half is not written at all.
* Compact: ports go 15 to a rule (``-m multiport``, its maximum), CIDRs 16 to
  a rule (``-d a,b,...``, which iptables expands into one kernel rule each),
  and the redirect targets are written inline. The worst script the settings
  limits allow stays far below the ``MAX_SCRIPT_BYTES`` bound (see there;
  docs/settings.md, "Limits", gives the sizes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from webhook.contract import constants
from webhook.engine.config import InjectorConfig
from webhook.engine.resources import container_resources
from webhook.engine.settings import ProxySettings
from webhook.engine.values import ALL, cidr_family

# Chain names are ours alone, so the rules never touch chains another tool owns.
INBOUND_CHAIN: Final = "MESH_INBOUND"
OUTPUT_CHAIN: Final = "MESH_OUTPUT"

# iptables-legacy takes a lock file under /run, which is read-only here
# (readOnlyRootFilesystem); /dev/shm is a tmpfs in every container. The
# nf_tables backend (the image's default) takes no lock and ignores this.
XTABLES_LOCKFILE: Final = "/dev/shm/xtables.lock"  # noqa: S108 - the pod's own tmpfs

LOOPBACK: Final = {4: "127.0.0.0/8", 6: "::1/128"}
# ``-m multiport`` takes at most 15 ports per rule (a kernel limit of xt_multiport).
PORTS_PER_RULE: Final = 15
# Addresses per ``-d`` list: keeps each line short and readable; iptables
# expands the list into one rule per address anyway.
CIDRS_PER_RULE: Final = 16
# The bound on the rendered ``sh -c`` script, i.e. on the largest argument of
# the container's command. Linux refuses to exec with any single argument over
# MAX_ARG_STRLEN (32 pages, 128 KiB): the pod would never leave Init ("Argument
# list too long"). 32 KiB is a quarter of that, and twice the worst the
# settings limits can produce, so the limits (not this check) are what bind;
# this is the backstop that turns a future mistake into an error here instead
# of a pod that cannot start.
MAX_SCRIPT_BYTES: Final = 32 * 1024

SKIPPED_IPV6: Final = "mesh-init: this kernel has no IPv6 nat table; IPv6 rules skipped"
_REDIRECT_IN: Final = f"-j REDIRECT --to-ports {constants.INBOUND_PORT}"
_REDIRECT_OUT: Final = f"-j REDIRECT --to-ports {constants.OUTBOUND_PORT}"


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    return (items[start : start + size] for start in range(0, len(items), size))


def _port_rules(chain: str, ports: Sequence[int], target: str) -> list[str]:
    """One rule per 15 ports (``--dport`` when a rule has only one)."""
    rules = []
    for chunk in _chunks(sorted(ports), PORTS_PER_RULE):
        if len(chunk) == 1:
            rules.append(f"-A {chain} -p tcp --dport {chunk[0]} {target}")
        else:
            listed = ",".join(str(port) for port in chunk)
            rules.append(f"-A {chain} -p tcp -m multiport --dports {listed} {target}")
    return rules


def _cidr_rules(chain: str, cidrs: Sequence[str], match: str, target: str) -> list[str]:
    return [
        f"-A {chain}{match} -d {','.join(chunk)} {target}"
        for chunk in _chunks(cidrs, CIDRS_PER_RULE)
    ]


def _inbound_rules(settings: ProxySettings) -> list[str]:
    """MESH_INBOUND: decide per destination port whether the proxy sees the connection."""
    never = set(constants.PROXY_PORTS) | set(settings.exclude_inbound_ports)
    if settings.include_inbound_ports == ALL:
        return [
            *_port_rules(INBOUND_CHAIN, sorted(never), "-j RETURN"),
            f"-A {INBOUND_CHAIN} -p tcp {_REDIRECT_IN}",
        ]
    ports = sorted(set(settings.include_inbound_ports) - never)
    return _port_rules(INBOUND_CHAIN, ports, _REDIRECT_IN)


def family_rules(settings: ProxySettings, family: int) -> list[str]:
    """The outbound CIDR rules of one family: exemptions, then (with an include list) redirects."""
    exclude = [c for c in settings.exclude_outbound_cidrs if cidr_family(c) == family]
    rules = _cidr_rules(OUTPUT_CHAIN, exclude, "", "-j RETURN")
    if settings.include_outbound_cidrs != ALL:
        include = [c for c in settings.include_outbound_cidrs if cidr_family(c) == family]
        rules += _cidr_rules(OUTPUT_CHAIN, include, " -p tcp", _REDIRECT_OUT)
    return rules


def _has_family_rules(settings: ProxySettings) -> bool:
    return bool(settings.exclude_outbound_cidrs) or settings.include_outbound_cidrs != ALL


def _template(settings: ProxySettings, *, proxy_uid: int) -> list[str]:
    """The nat table additions, with ``$1`` for the loopback range and ``$2`` for the
    family's CIDR rules (present only when the CIDR settings make any).

    Only our own chains are declared (declaring a built-in chain would reset its
    policy); the built-in PREROUTING and OUTPUT chains just get one jump each.
    First match wins in MESH_OUTPUT, so the exemptions come before any redirect.
    """
    lines = [
        "*nat",
        f":{INBOUND_CHAIN} - [0:0]",
        f":{OUTPUT_CHAIN} - [0:0]",
        *_inbound_rules(settings),
        f"-A {OUTPUT_CHAIN} -m owner --uid-owner {proxy_uid} -j RETURN",
        f"-A {OUTPUT_CHAIN} -o lo -d $1 -j RETURN",
        # The app calling its own pod IP: inbound port rules apply, and what
        # they do not redirect goes straight to the app, never to 15001.
        f"-A {OUTPUT_CHAIN} -o lo -j {INBOUND_CHAIN}",
        f"-A {OUTPUT_CHAIN} -o lo -j RETURN",
        *_port_rules(OUTPUT_CHAIN, settings.exclude_outbound_ports, "-j RETURN"),
    ]
    if _has_family_rules(settings):
        lines.append("$2")
    if settings.include_outbound_cidrs == ALL:
        lines.append(f"-A {OUTPUT_CHAIN} -p tcp {_REDIRECT_OUT}")
    lines += [
        f"-A PREROUTING -p tcp -j {INBOUND_CHAIN}",
        f"-A OUTPUT -p tcp -j {OUTPUT_CHAIN}",
        "COMMIT",
    ]
    return lines


def render_rules(settings: ProxySettings, *, proxy_uid: int, family: int = 4) -> str:
    """The ``iptables-restore --noflush`` (family 4) or ``ip6tables-restore`` (6) input.

    Exactly what the script's ``nat`` function prints for that family (a test
    runs the script to check): the template with the family's parts filled in.
    """
    out = []
    for line in _template(settings, proxy_uid=proxy_uid):
        if line == "$2":
            out += family_rules(settings, family)
        else:
            out.append(line.replace("$1", LOOPBACK[family]))
    return "\n".join(out) + "\n"


def _call(settings: ProxySettings, family: int) -> str:
    """``nat`` with this family's arguments, single-quoted (the rules hold no quote)."""
    if not _has_family_rules(settings):
        return f"nat {LOOPBACK[family]}"
    return f"nat {LOOPBACK[family]} '{chr(10).join(family_rules(settings, family))}'"


def render_script(settings: ProxySettings, *, proxy_uid: int, ipv6: bool = True) -> str:
    """The init container's shell script: define ``nat``, apply it per family, print the tables.

    ``set -eu`` makes a rejected rule fail the container (and so the pod)
    rather than leave it half-meshed. The heredoc is unquoted so that ``$1`` and
    ``$2`` expand; nothing else in the rules is special to the shell (chain
    names, numbers, addresses and flags only). ``iptables-save`` afterwards puts
    the rules as the kernel holds them in ``kubectl logs -c mesh-init``. The
    IPv6 half runs only where the kernel has IPv6 and an IPv6 nat table;
    otherwise it says so in the log and the pod starts with IPv4 intercepted.
    """
    template = "\n".join(_template(settings, proxy_uid=proxy_uid))
    script = (
        f"set -eu\nnat() {{\ncat <<EOF\n{template}\nEOF\n}}\n"
        f"{_call(settings, 4)} | iptables-restore --noflush\n"
        "iptables-save -t nat\n"
    )
    if ipv6:
        # Skipped only for a kernel without IPv6 (no /proc/net/if_inet6) or
        # without its nat table (what ip6tables says when the table module is
        # absent); any other failure of the probe stops the container, since
        # skipping would let the pod's IPv6 traffic bypass the proxy.
        script += (
            "if [ ! -e /proc/net/if_inet6 ]; then v6=\n"
            "elif p=$(ip6tables -t nat -S 2>&1); then v6=1\n"
            "else case $p in *'does not exist'*) v6=;;"
            ' *) echo "mesh-init: $p" >&2; exit 1;; esac; fi\n'
            'if [ "$v6" ]; then\n'
            f"{_call(settings, 6)} | ip6tables-restore --noflush\n"
            "ip6tables-save -t nat\n"
            f"else echo '{SKIPPED_IPV6}'; fi\n"
        )
    if len(script.encode()) > MAX_SCRIPT_BYTES:
        # Unreachable within the settings limits (a test renders the worst case).
        raise RuntimeError(
            f"mesh-init script of {len(script.encode())} bytes exceeds {MAX_SCRIPT_BYTES}"
        )
    return script


def mesh_init_container(settings: ProxySettings, config: InjectorConfig) -> dict[str, Any]:
    """The ``mesh-init`` container: root, but only NET_ADMIN and NET_RAW, under RuntimeDefault.

    Root is needed because netfilter changes require CAP_NET_ADMIN in the
    pod's network namespace; everything else is taken away.
    """
    container: dict[str, Any] = {
        "name": constants.INIT_CONTAINER,
        "image": config.init.image,
        "command": [
            "sh",
            "-c",
            render_script(settings, proxy_uid=config.proxy.uid, ipv6=config.ipv6),
        ],
        "env": [{"name": "XTABLES_LOCKFILE", "value": XTABLES_LOCKFILE}],
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            # Its own profile, whatever the pod sets: a pod-level Unconfined
            # must not leave a root container holding NET_ADMIN without one.
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    resources = container_resources(config.init.resources)
    if resources:
        container["resources"] = resources
    return container
