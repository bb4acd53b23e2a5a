"""kube-apiserver over HTTPS as the cluster admin, without a kubectl process.

A kubectl call costs a process start and a read of its discovery cache, and
a ``create`` or ``apply`` an OpenAPI read on top, all before the request is
sent (docs/testing.md, "Where the time goes", has the figures). The e2e
tests create namespaces and pods and poll for state hundreds of times a run,
so those calls go straight to the API here. What a user would type
(``apply``, ``rollout``, ``logs``, the messages kubectl prints) stays with
kubectl.
"""

from __future__ import annotations

import http.client
import json
import ssl
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

if TYPE_CHECKING:
    from harness.kube.control_plane import ControlPlane

Object = dict[str, Any]

# Kinds the tests create through ``create``, by (group/version, kind).
_COLLECTIONS: Final = {
    ("v1", "Pod"): "/api/v1/namespaces/{namespace}/pods",
    ("v1", "Namespace"): "/api/v1/namespaces",
    ("apps/v1", "Deployment"): "/apis/apps/v1/namespaces/{namespace}/deployments",
    ("apps/v1", "ReplicaSet"): "/apis/apps/v1/namespaces/{namespace}/replicasets",
}


class ApiRefused(RuntimeError):
    """The API server answered a call with an error status; ``message`` is its Status message."""

    def __init__(self, status: int, message: str, *, what: str) -> None:
        super().__init__(f"{what}: {status} {message}")
        self.status = status
        self.message = message


class AdminApi:
    """Calls as the admin (the control plane's client certificate), each on its own
    connection, so threads may share one instance."""

    def __init__(self, control_plane: ControlPlane) -> None:
        work = control_plane.workdir
        self._context = ssl.create_default_context(cafile=str(control_plane.ca_file))
        self._context.load_cert_chain(work / "admin.crt", work / "admin.key")
        self._port = int(control_plane.server.rsplit(":", 1)[1])

    def connect(self, *, timeout: float = 60.0) -> http.client.HTTPSConnection:
        """A new connection as the admin, for a caller that keeps one alive for many calls."""
        return http.client.HTTPSConnection(
            "127.0.0.1", self._port, context=self._context, timeout=timeout
        )

    def call(
        self, method: str, path: str, body: Any = None, *, timeout: float = 60.0
    ) -> tuple[int, Any]:
        """One request: (status, the decoded JSON answer, or None when empty)."""
        connection = self.connect(timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            connection.request(method, path, data, headers)
            reply = connection.getresponse()
            raw = reply.read()
        finally:
            connection.close()
        return reply.status, json.loads(raw) if raw else None

    def get(self, path: str) -> Object | None:
        """The object at ``path``, or None when the API server says it does not exist."""
        status, answer = self.call("GET", path)
        if status == 404:
            return None
        if status >= 300:
            raise ApiRefused(status, _message(answer), what=f"GET {path}")
        found: Object = answer
        return found

    def items(self, path: str, *, selector: str | None = None) -> list[Object]:
        """The items of the list at ``path``, those matching a label ``selector`` if given."""
        query = f"?labelSelector={quote(selector)}" if selector else ""
        listed = self.get(path + query)
        if listed is None:
            raise ApiRefused(404, "not found", what=f"listing {path}")
        found: list[Object] = listed["items"]
        return found

    def create(self, namespace: str | None, manifest: Object, *, dry_run: bool = False) -> Object:
        """Create ``manifest`` (strict field validation, as kubectl asks); what was stored,
        or with ``dry_run`` what would be (admission runs, nothing is kept).

        Raises :class:`ApiRefused` with the API server's message when it is
        refused: by admission (a webhook's denial), validation or a conflict.
        """
        kind = (str(manifest.get("apiVersion")), str(manifest.get("kind")))
        collection = _COLLECTIONS.get(kind)
        if collection is None:
            raise ValueError(f"no collection known for {kind}")
        path = collection.format(namespace=quote(namespace or "")) + "?fieldValidation=Strict"
        if dry_run:
            path += "&dryRun=All"
        status, answer = self.call("POST", path, manifest)
        if status >= 300:
            raise ApiRefused(status, _message(answer), what=f"creating {kind[1]}")
        created: Object = answer
        return created


def _message(answer: Any) -> str:
    if isinstance(answer, dict):
        return str(answer.get("message", answer))
    return str(answer)
