"""The containers the injector refuses to mesh: each rule a small function over the pod.

Never a pod that silently escapes the proxy or cannot start. Each rule below
looks at the pod spec (already known to have well-formed container lists,
``workloads.check_injectable``) and, for ``proxy_uid``, the settings and the
config; it returns the refusal's message, naming the container and what to
change, or ``None``. They run only for pods that would be injected, after the
settings and their locks (``inject``; docs/settings.md, "Refusals", gives the
whole order), in this order, each over ``containers`` then ``initContainers``,
the first offence refusing the pod:

1. ``reserved_name``: a container named ``mesh-proxy`` or ``mesh-init``;
2. ``reserved_port``: a container declaring a TCP ``containerPort`` the proxy
   listens on (``constants.PROXY_PORTS``);
3. ``proxy_uid``: a container that would be intercepted running as the
   proxy's UID (its own ``runAsUser``, else the pod's).

Kept plain on purpose (no Python subtleties): the policy mode states the same
rules in CEL and must refuse exactly the same pods.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

from webhook.contract import constants
from webhook.engine.values import shorten

# The container lists, in the order the rules walk them.
LISTS: Final = ("containers", "initContainers")
_OPT_OUT: Final = f"or opt the pod out with {constants.INJECT_KEY}=false"
_PROXY_PORTS: Final = ", ".join(str(port) for port in sorted(constants.PROXY_PORTS))
_RESERVED_PORTS: Final = frozenset(constants.PROXY_PORTS)


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, int, Mapping[str, Any]]]:
    """(list, index, container) for every container, ``containers`` first."""
    for field in LISTS:
        for index, container in enumerate(spec.get(field) or ()):
            yield field, index, container


def _which(prefix: str, field: str, index: int, container: Mapping[str, Any]) -> str:
    """``spec.containers[0] (app)``: where the container is, and its name."""
    return f"{prefix}.{field}[{index}] ({shorten(str(container['name']), 63)})"


def reserved_name(spec: Mapping[str, Any], prefix: str) -> str | None:
    """A user container named like one the injector adds (``mesh-proxy``, ``mesh-init``).

    A pod that was injected already is skipped before this (its status
    annotation lists them), so here the name can only be a clash.
    """
    for field, index, container in _containers(spec):
        name = container["name"]
        if name in constants.INJECTED_NAMES:
            return (
                f"{prefix}.{field}[{index}] is named {name!r}, which the injector reserves; "
                f"rename it, or add the {constants.STATUS_ANNOTATION} annotation if it was "
                f"injected already"
            )
    return None


def reserved_port(spec: Mapping[str, Any], prefix: str) -> str | None:
    """A container declaring a TCP port the proxy listens on (15000, 15001, 15006, 15021, 15090).

    Every container counts, init containers too, in either mode: they all
    share the pod's network namespace, the proxy listens there for the pod's
    whole life (in native mode from before any user init container starts),
    and a declared port the proxy also declares makes two containers claim
    one port (and often one name, ``http-envoy-prom``), which Services and
    scrapers cannot tell apart. A missing ``protocol`` is TCP; UDP and SCTP
    ports do not clash with the proxy's TCP listeners.
    """
    for field, index, container in _containers(spec):
        ports = container.get("ports")
        if not isinstance(ports, list):
            continue  # none (the API server would refuse anything else)
        for port in ports:
            if not isinstance(port, dict):
                continue
            # A JSON integer only (not ``true``, nor ``15001.0``), checked by
            # type first so that the set look-up never meets an unhashable value.
            number = port.get("containerPort")
            if (
                type(number) is int
                and number in _RESERVED_PORTS
                and port.get("protocol", "TCP") == "TCP"
            ):
                return (
                    f"{_which(prefix, field, index, container)} declares containerPort "
                    f"{number}, which the proxy uses (it listens on {_PROXY_PORTS}); move "
                    f"the container to another port, {_OPT_OUT}"
                )
    return None


def intercepted(field: str, container: Mapping[str, Any], *, native_sidecar: bool) -> bool:
    """Whether ``mesh-init``'s rules apply to the container's connections.

    App containers always. Init containers run before ``mesh-init`` in
    classic mode (they keep plain networking) and after it in native mode;
    one that keeps running (``restartPolicy: Always``, a sidecar of the
    user's) is intercepted in either mode once the rules are in.
    """
    if field == "containers" or native_sidecar:
        return True
    return container.get("restartPolicy") == "Always"


def run_as_user(obj: Mapping[str, Any]) -> Any:
    """``securityContext.runAsUser`` of a container or a pod spec, or ``None``."""
    context = obj.get("securityContext")
    return context.get("runAsUser") if isinstance(context, dict) else None


def proxy_uid(
    spec: Mapping[str, Any], prefix: str, *, native_sidecar: bool, uid: int
) -> str | None:
    """An intercepted container running as the proxy's UID (``proxy.uid`` in the config).

    ``mesh-init`` exempts that UID's connections from redirection (the proxy's
    own would loop otherwise), so such a container's traffic would bypass the
    proxy without anyone seeing it. A container's UID is its own
    ``runAsUser``, else the pod's; with neither the image decides, which
    admission cannot see.
    """
    pod_user = run_as_user(spec)
    for field, index, container in _containers(spec):
        if not intercepted(field, container, native_sidecar=native_sidecar):
            continue
        own = run_as_user(container)
        user = own if own is not None else pod_user
        if type(user) is int and user == uid:  # a JSON integer: ``true`` is not UID 1
            where = (
                f"{prefix}.{field}[{index}].securityContext.runAsUser"
                if own is not None
                else f"the pod's {prefix}.securityContext.runAsUser"
            )
            return (
                f"{_which(prefix, field, index, container)} runs as UID {uid} ({where}), "
                f"the proxy's UID: mesh-init exempts that UID from redirection, so its "
                f"traffic would bypass the proxy; run it as another UID (runAsUser in its "
                f"securityContext), {_OPT_OUT}"
            )
    return None


def container_refusal(
    spec: Mapping[str, Any], prefix: str, *, native_sidecar: bool, uid: int
) -> str | None:
    """The first of the rules above that refuses the pod, or ``None``."""
    return (
        reserved_name(spec, prefix)
        or reserved_port(spec, prefix)
        or proxy_uid(spec, prefix, native_sidecar=native_sidecar, uid=uid)
    )
