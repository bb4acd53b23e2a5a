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

import functools
from typing import Any, Final

from webhook.contract import constants
from webhook.engine.config import InjectorConfig
from webhook.engine.expr import (
    Expr,
    Setting,
    chunks,
    concat,
    eq,
    evaluate,
    filter_,
    first,
    flatten,
    if_,
    int_str,
    is_all,
    is_ipv6,
    items,
    join,
    list_of,
    map_,
    minus,
    not_,
    or_,
    render,
    size,
    sorted_unique,
)
from webhook.engine.resources import container_resources
from webhook.engine.settings import ProxySettings

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


def _port_rules(chain: str, ports: Expr, target: str) -> Expr:
    """One rule per 15 ports (``--dport`` when a rule has only one); ``ports`` are sorted."""
    return map_(
        chunks(ports, PORTS_PER_RULE),
        lambda chunk: if_(
            eq(size(chunk), 1),
            concat(f"-A {chain} -p tcp --dport ", int_str(first(chunk)), f" {target}"),
            concat(
                f"-A {chain} -p tcp -m multiport --dports ",
                join(map_(chunk, int_str), ","),
                f" {target}",
            ),
        ),
    )


def _cidr_rules(chain: str, cidrs: Expr, match: str, target: str) -> Expr:
    return map_(
        chunks(cidrs, CIDRS_PER_RULE),
        lambda chunk: concat(f"-A {chain}{match} -d ", join(chunk, ","), f" {target}"),
    )


def _inbound_rules() -> Expr:
    """MESH_INBOUND: decide per destination port whether the proxy sees the connection."""
    never = sorted_unique(flatten(list_of(constants.PROXY_PORTS, Setting("exclude_inbound_ports"))))
    include = Setting("include_inbound_ports")
    return if_(
        is_all(include),
        flatten(
            list_of(
                _port_rules(INBOUND_CHAIN, never, "-j RETURN"),
                (f"-A {INBOUND_CHAIN} -p tcp {_REDIRECT_IN}",),
            )
        ),
        _port_rules(INBOUND_CHAIN, minus(sorted_unique(items(include)), never), _REDIRECT_IN),
    )


def _of_family(cidrs: Expr, family: int) -> Expr:
    return filter_(cidrs, lambda cidr: is_ipv6(cidr) if family == 6 else not_(is_ipv6(cidr)))


def family_rules_expr(family: int) -> Expr:
    """The outbound CIDR rules of one family: exemptions, then (with an include list) redirects."""
    include = Setting("include_outbound_cidrs")
    exclude = _of_family(Setting("exclude_outbound_cidrs"), family)
    return flatten(
        list_of(
            _cidr_rules(OUTPUT_CHAIN, exclude, "", "-j RETURN"),
            if_(
                is_all(include),
                (),
                _cidr_rules(
                    OUTPUT_CHAIN, _of_family(items(include), family), " -p tcp", _REDIRECT_OUT
                ),
            ),
        )
    )


def _has_family_rules() -> Expr:
    return or_(
        not_(eq(size(Setting("exclude_outbound_cidrs")), 0)),
        not_(is_all(Setting("include_outbound_cidrs"))),
    )


def _template(*, proxy_uid: int) -> Expr:
    """The nat table additions, with ``$1`` for the loopback range and ``$2`` for the
    family's CIDR rules (present only when the CIDR settings make any).

    Only our own chains are declared (declaring a built-in chain would reset its
    policy); the built-in PREROUTING and OUTPUT chains just get one jump each.
    First match wins in MESH_OUTPUT, so the exemptions come before any redirect.
    """
    return flatten(
        list_of(
            ("*nat", f":{INBOUND_CHAIN} - [0:0]", f":{OUTPUT_CHAIN} - [0:0]"),
            _inbound_rules(),
            (
                f"-A {OUTPUT_CHAIN} -m owner --uid-owner {proxy_uid} -j RETURN",
                f"-A {OUTPUT_CHAIN} -o lo -d $1 -j RETURN",
                # The app calling its own pod IP: inbound port rules apply, and what
                # they do not redirect goes straight to the app, never to 15001.
                f"-A {OUTPUT_CHAIN} -o lo -j {INBOUND_CHAIN}",
                f"-A {OUTPUT_CHAIN} -o lo -j RETURN",
            ),
            _port_rules(OUTPUT_CHAIN, Setting("exclude_outbound_ports"), "-j RETURN"),
            if_(_has_family_rules(), ("$2",), ()),
            if_(
                is_all(Setting("include_outbound_cidrs")),
                (f"-A {OUTPUT_CHAIN} -p tcp {_REDIRECT_OUT}",),
                (),
            ),
            (f"-A PREROUTING -p tcp -j {INBOUND_CHAIN}", f"-A OUTPUT -p tcp -j {OUTPUT_CHAIN}"),
            ("COMMIT",),
        )
    )


def _env(settings: ProxySettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in _SCRIPT_SETTINGS}


_SCRIPT_SETTINGS: Final = (
    "include_inbound_ports",
    "exclude_inbound_ports",
    "exclude_outbound_ports",
    "include_outbound_cidrs",
    "exclude_outbound_cidrs",
)


def family_rules(settings: ProxySettings, family: int) -> list[str]:
    """The outbound CIDR rules of one family (``family_rules_expr`` evaluated)."""
    return list(evaluate(family_rules_expr(family), _env(settings)))


def render_rules(settings: ProxySettings, *, proxy_uid: int, family: int = 4) -> str:
    """The ``iptables-restore --noflush`` (family 4) or ``ip6tables-restore`` (6) input.

    Exactly what the script's ``nat`` function prints for that family (a test
    runs the script to check): the template with the family's parts filled in.
    """
    out = []
    for line in evaluate(_template(proxy_uid=proxy_uid), _env(settings)):
        if line == "$2":
            out += family_rules(settings, family)
        else:
            out.append(line.replace("$1", LOOPBACK[family]))
    return "\n".join(out) + "\n"


def _call(family: int) -> Expr:
    """``nat`` with this family's arguments, single-quoted (the rules hold no quote)."""
    return if_(
        _has_family_rules(),
        concat(f"nat {LOOPBACK[family]} '", join(family_rules_expr(family), "\n"), "'"),
        f"nat {LOOPBACK[family]}",
    )


@functools.lru_cache(maxsize=16)
def script_expr(*, proxy_uid: int, ipv6: bool) -> Expr:
    """The init container's shell script as an expression over the settings (see
    ``render_script``); the MutatingAdmissionPolicy compiles this very expression."""
    parts: list[Any] = [
        "set -eu\nnat() {\ncat <<EOF\n",
        join(_template(proxy_uid=proxy_uid), "\n"),
        "\nEOF\n}\n",
        _call(4),
        " | iptables-restore --noflush\niptables-save -t nat\n",
    ]
    if ipv6:
        # Skipped only for a kernel without IPv6 (no /proc/net/if_inet6) or
        # without its nat table (what ip6tables says when the table module is
        # absent); any other failure of the probe stops the container, since
        # skipping would let the pod's IPv6 traffic bypass the proxy.
        parts += [
            "if [ ! -e /proc/net/if_inet6 ]; then v6=\n"
            "elif p=$(ip6tables -t nat -S 2>&1); then v6=1\n"
            "else case $p in *'does not exist'*) v6=;;"
            ' *) echo "mesh-init: $p" >&2; exit 1;; esac; fi\n'
            'if [ "$v6" ]; then\n',
            _call(6),
            " | ip6tables-restore --noflush\nip6tables-save -t nat\n"
            f"else echo '{SKIPPED_IPV6}'; fi\n",
        ]
    return concat(*parts)


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
    return _checked(evaluate(script_expr(proxy_uid=proxy_uid, ipv6=ipv6), _env(settings)))


def _checked(script: str) -> str:
    if len(script.encode()) > MAX_SCRIPT_BYTES:
        # Unreachable within the settings limits (a test renders the worst case).
        raise RuntimeError(
            f"mesh-init script of {len(script.encode())} bytes exceeds {MAX_SCRIPT_BYTES}"
        )
    return script


def mesh_init_template(config: InjectorConfig) -> dict[str, Any]:
    """The ``mesh-init`` container: root, but only NET_ADMIN and NET_RAW, under RuntimeDefault,
    its script an expression (``expr.render`` fills it).

    Root is needed because netfilter changes require CAP_NET_ADMIN in the
    pod's network namespace; everything else is taken away.
    """
    container: dict[str, Any] = {
        "name": constants.INIT_CONTAINER,
        "image": config.init.image,
        "command": [
            "sh",
            "-c",
            script_expr(proxy_uid=config.proxy.uid, ipv6=config.ipv6),
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


def mesh_init_container(settings: ProxySettings, config: InjectorConfig) -> dict[str, Any]:
    """The ``mesh-init`` container for these settings (``mesh_init_template`` rendered)."""
    container: dict[str, Any] = render(mesh_init_template(config), _env(settings))
    _checked(container["command"][2])
    return container
