"""Plain objects by path, served as kube-apiserver serves them: for code that reads many kinds.

A test puts objects at the paths kube-apiserver serves them from
(``/apis/apps/v1/namespaces/shop/deployments/web``) and routes the store
where it should answer (``api.route("/", store)``):

- ``GET`` of an object's path: the object (else a 404 NotFound Status);
- ``GET`` of a collection (a path ending in a known resource, namespaced or
  cluster-wide: ``.../namespaces/shop/deployments`` or
  ``/apis/apps/v1/deployments``): the objects under it in pages
  (``limit``/``continue``), filtered by a ``labelSelector`` of equalities
  and existences (``a=b,c,!d``);
- ``errors``: a path whose ``GET`` answers with that failure code and a Status
  (``403``, or ``(403, message)`` for the Status to carry that message);
- ``POST`` (a create, e.g. a dry-run pod): whatever ``dry_run(namespace,
  body)`` returns as ``(code, body)``; by default the body back, 201;
- ``PUT`` of an object's path (a replace): stored, with a new
  ``metadata.resourceVersion``, when the body carries the one stored (else a
  409 Conflict, as the API server answers a write based on a stale read);
  ``conflicts`` makes the next that many replaces of a path conflict anyway;
- ``PATCH``: a JSON Patch (``application/json-patch+json``, a failed ``test``
  answers 422) or else a JSON merge patch, applied to the stored object;
- ``creates``: set it, and a ``POST`` that is not a dry run stores the body
  under the collection's path (409 AlreadyExists when there is one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import jsonpatch

from harness.fake_kube_api.wire import status

if TYPE_CHECKING:
    from harness.fake_kube_api.server import Request

# The collections a path may end in unless the store is told otherwise.
RESOURCES = frozenset(
    {
        "namespaces", "pods", "services", "configmaps", "secrets", "serviceaccounts",
        "endpointslices", "deployments", "statefulsets", "daemonsets", "replicasets",
        "jobs", "cronjobs", "mutatingwebhookconfigurations", "validatingwebhookconfigurations",
        "mutatingadmissionpolicies", "validatingadmissionpolicies",
        "mutatingadmissionpolicybindings", "validatingadmissionpolicybindings",
    }
)  # fmt: skip

DryRun = Callable[[str, dict[str, Any]], tuple[int, Any]]


def _created(namespace: str, body: dict[str, Any]) -> tuple[int, Any]:
    return 201, body


class ObjectStore:
    """Objects by path, a route handler (``api.route(prefix, store)``)."""

    def __init__(self, resources: Iterable[str] = RESOURCES) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, int | tuple[int, str]] = {}
        self.conflicts: dict[str, int] = {}
        self.creates = False
        self.dry_run: DryRun = _created
        self.resources = frozenset(resources)
        self._versions = 100

    def __call__(self, request: Request, path: str, query: dict[str, str]) -> None:
        if request.command == "POST":
            body = json.loads(request.body or b"{}")
            if self.creates and query.get("dryRun") != "All":
                request.send_json(*self.create(path, body))
            else:
                request.send_json(*self.dry_run(path.split("/")[4], body))
        elif request.command == "PUT":
            request.send_json(*self.replace(path, json.loads(request.body or b"{}")))
        elif request.command == "PATCH":
            body = json.loads(request.body or b"{}")
            if request.headers.get("Content-Type") == "application/json-patch+json":
                request.send_json(*self.json_patch(path, body))
            else:
                request.send_json(*self.merge(path, body))
        else:
            request.send_json(*self.get(path, query))

    def _stored(self, path: str, obj: dict[str, Any]) -> tuple[int, Any]:
        self._versions += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._versions)
        self.objects[path] = obj
        return 200, obj

    def replace(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """A PUT: stored when its resourceVersion is the stored one."""
        current = self.objects.get(path)
        if current is None:
            return 404, status(404, "NotFound", f"{path} not found")
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        stale = wanted != (current.get("metadata") or {}).get("resourceVersion")
        if self.conflicts.get(path, 0) > 0 or stale:
            self.conflicts[path] = max(0, self.conflicts.get(path, 0) - 1)
            return 409, status(409, "Conflict", f"{path}: the object has been modified")
        return self._stored(path, body)

    def create(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """A POST to a collection: stored under it by name."""
        target = f"{path}/{(body.get('metadata') or {}).get('name')}"
        if target in self.objects:
            return 409, status(409, "AlreadyExists", f"{target} already exists")
        _, stored = self._stored(target, body)
        return 201, stored

    def json_patch(self, path: str, patch: list[dict[str, Any]]) -> tuple[int, Any]:
        """A PATCH as a JSON Patch (RFC 6902)."""
        current = self.objects.get(path)
        if current is None:
            return 404, status(404, "NotFound", f"{path} not found")
        try:
            patched = jsonpatch.apply_patch(current, patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
            return 422, status(422, "Invalid", str(err))
        return self._stored(path, patched)

    def merge(self, path: str, patch: dict[str, Any]) -> tuple[int, Any]:
        """A PATCH, as a JSON merge patch (RFC 7386)."""
        current = self.objects.get(path)
        if current is None:
            return 404, status(404, "NotFound", f"{path} not found")
        return self._stored(path, _merged(current, patch))

    def get(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        """The answer to ``GET path?query``: an error, an object, a list page, or NotFound."""
        if path in self.errors:
            error = self.errors[path]
            code, message = error if isinstance(error, tuple) else (error, f"{path} says no")
            return code, status(code, HTTPStatus(code).phrase.replace(" ", ""), message)
        if path in self.objects:
            return 200, self.objects[path]
        head, _, resource = path.rpartition("/")
        if resource not in self.resources:
            return 404, status(404, "NotFound", f"{path} not found")
        selector = [p for p in query.get("labelSelector", "").split(",") if p]
        items = [
            obj
            for key, obj in sorted(self.objects.items())
            if (parent := key.rpartition("/")[0]) == path
            or (
                (parent.startswith(f"{head}/namespaces/") and parent.endswith(f"/{resource}"))
                and parent.count("/") == path.count("/") + 2
            )
            if _selected(selector, obj.get("metadata", {}).get("labels") or {})
        ]
        start, limit = int(query.get("continue") or 0), int(query.get("limit") or len(items))
        metadata = {"resourceVersion": "1"}
        if start + limit < len(items):
            metadata["continue"] = str(start + limit)
        return 200, {"metadata": metadata, "items": items[start : start + limit]}


def _selected(selector: list[str], labels: dict[str, str]) -> bool:
    """Whether ``labels`` satisfy every requirement (``a=b``, ``a``, ``!a``)."""
    for requirement in selector:
        key, equals, value = requirement.partition("=")
        if equals:
            if labels.get(key) != value:
                return False
        elif key.startswith("!"):
            if key[1:] in labels:
                return False
        elif key not in labels:
            return False
    return True


def _merged(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge key by key, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merged(out.get(key), value)
    return out
