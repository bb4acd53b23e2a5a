"""Where the pod lives inside each kind of object the injector accepts.

A Deployment's pod is ``spec.template``, a CronJob's is
``spec.jobTemplate.spec.template``; the engine works on the pod part only and
prefixes patch paths with the location found here. Kinds not listed pass
through untouched (Services, ConfigMaps, custom resources, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

_TEMPLATE: Final = ("spec", "template")
_CRONJOB_TEMPLATE: Final = ("spec", "jobTemplate", "spec", "template")

# kind -> (API groups it may come from, path to the pod template).
WORKLOADS: Final[dict[str, tuple[frozenset[str], tuple[str, ...]]]] = {
    "Pod": (frozenset({""}), ()),
    "Deployment": (frozenset({"apps", "extensions"}), _TEMPLATE),
    "StatefulSet": (frozenset({"apps"}), _TEMPLATE),
    "DaemonSet": (frozenset({"apps", "extensions"}), _TEMPLATE),
    "ReplicaSet": (frozenset({"apps", "extensions"}), _TEMPLATE),
    "Job": (frozenset({"batch"}), _TEMPLATE),
    "CronJob": (frozenset({"batch"}), _CRONJOB_TEMPLATE),
}


class ObjectError(ValueError):
    """The object is malformed where the injector must read it."""


@dataclass(frozen=True, slots=True)
class PodLocation:
    """Path (as keys) from the object's root to its pod (or pod template)."""

    kind: str
    path: tuple[str, ...]

    @property
    def dotted(self) -> str:
        """Where the pod is, as users write it in error messages (``spec.template``)."""
        return ".".join(self.path)


def describe(obj: dict[str, Any]) -> str:
    """``Deployment shop/web`` (or ``Pod web-`` for a generateName) for messages."""
    kind = obj.get("kind") if isinstance(obj.get("kind"), str) else "object"
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return str(kind)
    name = meta.get("name") or meta.get("generateName") or ""
    namespace = meta.get("namespace")
    if not isinstance(name, str) or not name:
        return str(kind)
    return (
        f"{kind} {namespace}/{name}"
        if isinstance(namespace, str) and namespace
        else f"{kind} {name}"
    )


def locate_pod(obj: dict[str, Any]) -> PodLocation | None:
    """The pod inside ``obj``, or None for kinds that pass through.

    A workload kind with a foreign API group (``kind: Deployment`` in ``v1``) is
    an error rather than a pass-through: it is almost certainly a typo that
    would otherwise leave the workload silently un-meshed.
    """
    kind = obj.get("kind")
    api_version = obj.get("apiVersion")
    if not isinstance(kind, str) or not kind:
        raise ObjectError(f"{describe(obj)}: kind is missing")
    if not isinstance(api_version, str) or not api_version:
        raise ObjectError(f"{describe(obj)}: apiVersion is missing")
    known = WORKLOADS.get(kind)
    if known is None:
        return None
    groups, path = known
    group = api_version.rpartition("/")[0]
    if group not in groups:
        raise ObjectError(
            f"{describe(obj)}: apiVersion {api_version} has no {kind} "
            f"(expected group {' or '.join(sorted(g or 'core (v1)' for g in groups))})"
        )
    return PodLocation(kind, path)


def pod_parts(obj: dict[str, Any], location: PodLocation) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's metadata (possibly empty) and spec, checked for the types the engine reads."""
    node: Any = obj
    walked: list[str] = []
    for key in location.path:
        walked.append(key)
        node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ObjectError(f"{describe(obj)}: {'.'.join(walked)} is missing or not an object")
    prefix = f"{location.dotted}." if location.path else ""
    meta = node.get("metadata")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise ObjectError(f"{describe(obj)}: {prefix}metadata is not an object")
    for field in ("labels", "annotations"):
        value = meta.get(field)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ObjectError(
                f"{describe(obj)}: {prefix}metadata.{field} must map strings to strings"
            )
    spec = node.get("spec")
    if not isinstance(spec, dict):
        raise ObjectError(f"{describe(obj)}: {prefix}spec is missing or not an object")
    return meta, spec


def check_injectable(obj: dict[str, Any], location: PodLocation, spec: dict[str, Any]) -> None:
    """The shape that matters when we are about to add containers and volumes.

    What the pod's containers may not be (reserved names, ports, the proxy's
    UID) is ``webhook.engine.refusals``.
    """
    prefix = f"{location.dotted}.spec" if location.path else "spec"
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise ObjectError(f"{describe(obj)}: {prefix}.containers is missing or empty")
    for field in ("containers", "initContainers", "volumes"):
        items = spec.get(field)
        if items is None:
            continue
        if not isinstance(items, list):
            raise ObjectError(f"{describe(obj)}: {prefix}.{field} is not a list")
        for index, item in enumerate(items):
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and name:
                continue  # the common case, checked without building a message
            where = f"{describe(obj)}: {prefix}.{field}[{index}]"
            if not isinstance(item, dict):
                raise ObjectError(f"{where} is not an object")
            raise ObjectError(f"{where} has no name")
