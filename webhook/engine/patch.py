"""JSON Patch (RFC 6902) built from what the injector adds, never from a diff.

Diffing whole pods is how injectors end up quadratic in list length; here the
patch is written directly from the additions, so its cost is proportional to
what is added. Only ``add`` operations are produced: missing maps and arrays
(or ``null`` ones) are created whole, existing arrays are appended to (or
inserted at the front, which keeps the user's order), and existing maps get
one ``add`` per key. Previews and the CLI get their object by applying this
very patch (``webhook.manifests.patched``), so what people see is what the
apiserver gets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Op = dict[str, Any]


def escape(token: str) -> str:
    """RFC 6901: ``~`` -> ``~0`` first, then ``/`` -> ``~1``."""
    return token.replace("~", "~0").replace("/", "~1")


def pointer(path: tuple[str, ...]) -> str:
    """A JSON Pointer for a path of keys."""
    return "".join("/" + escape(part) for part in path)


@dataclass(frozen=True, slots=True)
class Additions:
    """What gets added to one pod spec and its metadata."""

    init_front: tuple[dict[str, Any], ...] = ()
    init_back: tuple[dict[str, Any], ...] = ()
    containers_front: tuple[dict[str, Any], ...] = ()
    containers_back: tuple[dict[str, Any], ...] = ()
    volumes: tuple[dict[str, Any], ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)

    def lists(self) -> tuple[tuple[str, tuple[Any, ...], tuple[Any, ...]], ...]:
        """(spec field, items to put in front, items to append) for each list we touch."""
        return (
            ("initContainers", self.init_front, self.init_back),
            ("containers", self.containers_front, self.containers_back),
            ("volumes", (), self.volumes),
        )


def prior_shapes(pod: dict[str, Any], lists: Iterable[str]) -> tuple[list[str], list[str]]:
    """Which of the spec ``lists`` and of the pod's metadata and annotations (injection
    always adds annotations) are ``null`` or empty now: (was null, was empty).

    ``add`` treats a ``null`` member like a missing one, so after injection
    the two look alike; recording them lets ``uninject`` put back exactly
    what was there (see ``status``).
    """
    was_null: list[str] = []
    was_empty: list[str] = []

    def note(name: str, value: Any) -> None:
        if value is None:
            was_null.append(name)
        elif value is not _MISSING and not value:
            was_empty.append(name)

    spec: dict[str, Any] = pod["spec"]
    for name in lists:
        note(name, spec.get(name, _MISSING))
    meta = pod.get("metadata", _MISSING)
    note("metadata", meta)
    if isinstance(meta, dict):
        note("annotations", meta.get("annotations", _MISSING))
    return was_null, was_empty


_MISSING: Any = object()


def build_patch(pod_path: tuple[str, ...], pod: dict[str, Any], additions: Additions) -> list[Op]:
    """The ``add`` operations that turn the pod at ``pod_path`` into the injected one."""
    ops: list[Op] = []
    spec_path = pointer((*pod_path, "spec"))
    spec: dict[str, Any] = pod["spec"]
    for name, front, back in additions.lists():
        if not front and not back:
            continue
        where = f"{spec_path}/{name}"
        if spec.get(name) is None:
            ops.append({"op": "add", "path": where, "value": [*front, *back]})
            continue
        ops.extend(
            {"op": "add", "path": f"{where}/{index}", "value": item}
            for index, item in enumerate(front)
        )
        ops.extend({"op": "add", "path": f"{where}/-", "value": item} for item in back)

    if additions.annotations:
        meta_path = pointer((*pod_path, "metadata"))
        meta = pod.get("metadata")
        if meta is None:
            # ``add`` replaces a null member, and creates a missing one.
            ops.append(
                {"op": "add", "path": meta_path, "value": {"annotations": additions.annotations}}
            )
        elif meta.get("annotations") is None:
            ops.append(
                {"op": "add", "path": f"{meta_path}/annotations", "value": additions.annotations}
            )
        else:
            ops.extend(
                {"op": "add", "path": f"{meta_path}/annotations/{escape(key)}", "value": value}
                for key, value in additions.annotations.items()
            )
    return ops
