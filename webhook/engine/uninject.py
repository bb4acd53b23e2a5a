"""``uninject``: take out exactly what ``inject`` put in, as the status annotation records it.

The annotation names the containers, init containers and volumes the injector
added and the annotations it set; those (by name) and the annotation itself
are removed, and nothing else: containers, volumes and annotations the user
added after injection stay, in their order. An object without the annotation
comes back unchanged, even if it has a container called ``mesh-proxy``: only
the annotation says the injector put it there. Members the injector created
(a missing ``initContainers`` list, a missing ``annotations`` map) are
removed again once empty, ``wasNull``/``wasEmpty`` restore the rest, and
a status annotation the pod came with (``replaced``) is put back, so
``uninject(inject(x)) == x``.

Like ``inject`` it produces a JSON Patch (here with ``remove`` and
``replace`` operations, removals from the end of each list first, so every
index is valid when applied in order); the resulting object is that patch
applied, which is ``webhook.manifests.patched``'s job, outside the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from webhook.contract import constants
from webhook.engine.inject import InjectionRefused
from webhook.engine.patch import Op, escape, pointer
from webhook.engine.status import InjectionStatus, StatusError
from webhook.engine.workloads import ObjectError, PodLocation, describe, locate_pod, pod_parts

_LISTS: Final = ("initContainers", "containers", "volumes")


@dataclass(frozen=True, slots=True)
class UninjectionResult:
    """What was removed (as a patch from ``source``), and why not when nothing was."""

    location: PodLocation | None
    source: dict[str, Any]
    patch: tuple[Op, ...] = ()
    reason: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def removed(self) -> bool:
        """True when something was taken out."""
        return bool(self.patch)


def uninject(obj: dict[str, Any]) -> UninjectionResult:
    """Remove what the status annotation of ``obj``'s pod says was injected.

    Raises InjectionRefused for a malformed object or an annotation that is
    not the injector's JSON (guessing what to remove could remove the user's).
    """
    try:
        location = locate_pod(obj)
        if location is None:
            return UninjectionResult(None, obj, reason="kind has no pod template")
        meta, spec = pod_parts(obj, location)
    except ObjectError as err:
        raise InjectionRefused(str(err)) from None

    annotations: dict[str, str] = meta.get("annotations") or {}
    raw = annotations.get(constants.STATUS_ANNOTATION)
    if raw is None:
        return UninjectionResult(
            location, obj, reason=f"no {constants.STATUS_ANNOTATION} annotation"
        )
    prefix = f"{location.dotted}." if location.path else ""
    try:
        status = InjectionStatus.parse(raw)
    except StatusError as err:
        raise InjectionRefused(
            f"{describe(obj)}: {prefix}metadata.annotations[{constants.STATUS_ANNOTATION}] "
            f"{err}; not removing anything"
        ) from None

    ops: list[Op] = []
    warnings: list[str] = []
    spec_path = pointer((*location.path, "spec"))
    listed = {
        "initContainers": status.init_containers,
        "containers": status.containers,
        "volumes": status.volumes,
    }
    for name in _LISTS:
        ops.extend(
            _remove_items(
                spec,
                name,
                names=listed[name],
                status=status,
                path=f"{spec_path}/{name}",
                where=f"{prefix}spec",
                warnings=warnings,
            )
        )
    ops.extend(_remove_annotations(meta, annotations, status, location))
    return UninjectionResult(location, obj, tuple(ops), warnings=tuple(warnings))


def _remove_items(
    spec: dict[str, Any],
    name: str,
    *,
    names: tuple[str, ...],
    status: InjectionStatus,
    path: str,
    where: str,
    warnings: list[str],
) -> list[Op]:
    """Ops removing the named items of one spec list (the whole list if it empties)."""
    if not names:
        return []
    items = spec.get(name)
    if not isinstance(items, list):
        items = []
    wanted = set(names)
    # The client's list: items and names may be of any type; only string names match.
    doomed = [
        index
        for index, item in enumerate(items)
        if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"] in wanted
    ]
    missing = wanted - {items[index]["name"] for index in doomed}
    if missing:
        warnings.append(
            f"{where}.{name} has no {', '.join(sorted(missing))}, which the status "
            f"annotation lists as injected"
        )
    if not doomed:
        return []
    if len(doomed) == len(items):
        return [_restore(name, path, status, empty=[])]
    return [{"op": "remove", "path": f"{path}/{index}"} for index in reversed(doomed)]


def _remove_annotations(
    meta: dict[str, Any],
    annotations: dict[str, str],
    status: InjectionStatus,
    location: PodLocation,
) -> list[Op]:
    """Ops removing the status annotation and the ones it lists (and maps that empty).

    A status the pod had before injection (``replaced``) gets its old value back
    instead of being removed, so the map never empties then.
    """
    keys = [
        key
        for key in status.annotations
        if key in annotations and key != constants.STATUS_ANNOTATION
    ]
    meta_path = pointer((*location.path, "metadata"))
    ops: list[Op] = []
    if status.replaced is None:
        keys.insert(0, constants.STATUS_ANNOTATION)
    else:
        path = f"{meta_path}/annotations/{escape(constants.STATUS_ANNOTATION)}"
        ops.append({"op": "replace", "path": path, "value": status.replaced})
    if len(keys) < len(annotations):
        ops.extend(
            {"op": "remove", "path": f"{meta_path}/annotations/{escape(key)}"} for key in keys
        )
        return ops
    # The annotations map empties.
    if "annotations" in status.was_null or "annotations" in status.was_empty:
        return [_restore("annotations", f"{meta_path}/annotations", status, empty={})]
    if len(meta) > 1:
        return [{"op": "remove", "path": f"{meta_path}/annotations"}]
    # ... and with it the metadata the injector created for it.
    return [_restore("metadata", meta_path, status, empty={})]


def _restore(name: str, path: str, status: InjectionStatus, *, empty: Any) -> Op:
    """The op for a member that ends up empty: back to null, to empty, or gone."""
    if name in status.was_null:
        return {"op": "replace", "path": path, "value": None}
    if name in status.was_empty:
        return {"op": "replace", "path": path, "value": empty}
    return {"op": "remove", "path": path}
