"""Plain objects by path, served as kube-apiserver serves them: for code that reads many kinds.

A test puts objects at the paths kube-apiserver serves them from
(``/apis/apps/v1/namespaces/shop/deployments/web``) and routes the store
where it should answer (``api.route("/", store)``):

- ``GET`` of an object's path: the object (else a 404 NotFound Status);
- ``GET`` of a collection (a path ending in a known resource, namespaced or
  cluster-wide: ``.../namespaces/shop/deployments`` or
  ``/apis/apps/v1/deployments``): the objects under it in pages
  (``limit``/``continue``), filtered by an equality ``labelSelector``
  (``a=b,c=d``);
- ``errors``: a path whose ``GET`` answers with that failure code and a Status
  (``403``, or ``(403, message)`` for the Status to carry that message);
- ``POST`` (a create, e.g. a dry-run pod): whatever ``dry_run(namespace,
  body)`` returns as ``(code, body)``; by default the body back, 201.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from harness.fake_kube_api.wire import status

if TYPE_CHECKING:
    from harness.fake_kube_api.server import Request

# The collections a path may end in unless the store is told otherwise.
RESOURCES = frozenset(
    {
        "namespaces", "pods", "services", "configmaps", "secrets", "serviceaccounts",
        "endpointslices", "deployments", "statefulsets", "daemonsets", "replicasets",
        "jobs", "cronjobs", "mutatingwebhookconfigurations", "validatingwebhookconfigurations",
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
        self.dry_run: DryRun = _created
        self.resources = frozenset(resources)

    def __call__(self, request: Request, path: str, query: dict[str, str]) -> None:
        if request.command == "POST":
            body = json.loads(request.body or b"{}")
            request.send_json(*self.dry_run(path.split("/")[4], body))
        else:
            request.send_json(*self.get(path, query))

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
        wanted = dict(p.split("=", 1) for p in query.get("labelSelector", "").split(",") if p)
        items = [
            obj
            for key, obj in sorted(self.objects.items())
            if (parent := key.rpartition("/")[0]) == path
            or (
                (parent.startswith(f"{head}/namespaces/") and parent.endswith(f"/{resource}"))
                and parent.count("/") == path.count("/") + 2
            )
            if wanted.items() <= (obj.get("metadata", {}).get("labels") or {}).items()
        ]
        start, limit = int(query.get("continue") or 0), int(query.get("limit") or len(items))
        metadata = {"resourceVersion": "1"}
        if start + limit < len(items):
            metadata["continue"] = str(start + limit)
        return 200, {"metadata": metadata, "items": items[start : start + limit]}
