"""The API server as the policy-mode tests call it: kept-alive HTTPS, server-side apply,
dry runs, and namespaces made on demand (tests/e2e/policy_modes.py uses these)."""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from harness.kube.control_plane import ControlPlane

Object = dict[str, Any]

# A label no test sets otherwise: where the policy is bound (the tests narrow the
# binding's selector to it, so a webhook installed next to it sees other namespaces).
MODE_LABEL: Final = "policy-test.sidecar.mesh.io/mode"


class ApiError(RuntimeError):
    """The API server answered a set-up call with an error."""


class Api:
    """Plain HTTPS calls to kube-apiserver as the admin (client certificate), on one
    connection kept alive (``AdminApi`` opens one per call)."""

    def __init__(self, control_plane: ControlPlane) -> None:
        self._admin = control_plane.admin_api()
        self._conn: http.client.HTTPSConnection | None = None
        self._plain_runs: dict[tuple[str, str], tuple[int, Object]] = {}

    def call(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        """One request: (status, the decoded JSON answer)."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._admin.connect(timeout=120)
            try:
                headers = {"Content-Type": content_type, "Accept": "application/json"}
                self._conn.request(method, path, data, headers)
                reply = self._conn.getresponse()
                raw = reply.read()
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
                continue
            return reply.status, json.loads(raw) if raw else None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def apply(self, obj: Object) -> Object:
        """Server-side apply of one object (cluster-scoped or namespaced)."""
        path = _object_path(obj)
        status, answer = self.call(
            "PATCH",
            f"{path}?fieldManager=policy-tests&force=true",
            obj,
            content_type="application/apply-patch+yaml",
        )
        if status >= 300:
            raise ApiError(
                f"apply {obj['kind']} {obj['metadata']['name']}: {status} {str(answer)[-3000:]}"
            )
        result: Object = answer
        return result

    def delete(self, obj: Object) -> None:
        self.call("DELETE", _object_path(obj))

    def dry_run_pod(self, namespace: str, pod: Object) -> tuple[int, Object]:
        """A server-side dry run of creating ``pod``: (status, the pod or the Status)."""
        status, answer = self.call("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", pod)
        return status, answer

    def plain_dry_run_pod(self, namespace: str, pod: Object) -> tuple[int, Object]:
        """``dry_run_pod`` in a namespace where nothing mutates or judges pods by its labels:
        the answer depends on the pod alone, so each pod is sent once (a case asks twice:
        as the webhook is shown it, and whether the API server refuses it by itself)."""
        key = (namespace, json.dumps(pod, sort_keys=True))
        found = self._plain_runs.get(key)
        if found is None:
            found = self._plain_runs[key] = self.dry_run_pod(namespace, pod)
        status, answer = found
        return status, copy.deepcopy(answer)


_PLURALS: Final = {
    "MutatingAdmissionPolicy": "mutatingadmissionpolicies",
    "MutatingAdmissionPolicyBinding": "mutatingadmissionpolicybindings",
    "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
    "Namespace": "namespaces",
}


def _object_path(obj: Object) -> str:
    version = obj["apiVersion"]
    base = f"/api/{version}" if "/" not in version else f"/apis/{version}"
    namespace = obj["metadata"].get("namespace")
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{scope}/{_PLURALS[obj['kind']]}/{quote(obj['metadata']['name'])}"


# --- namespaces ------------------------------------------------------------------------


@dataclass
class Namespaces:
    """Namespaces for cases, one per distinct (mode, labels, annotations), made on demand."""

    api: Api
    control_plane: ControlPlane
    made: dict[str, str] = field(default_factory=dict)

    def get(
        self,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        *,
        mode: str,
        name: str | None = None,
    ) -> str:
        """A namespace with these labels and annotations (plus the mode label) ready for pods.

        ``name`` asks for that name (created if missing, and then owned here);
        its labels are only set when this creates it.
        """
        key = json.dumps([mode, name, dict(labels), dict(annotations)], sort_keys=True)
        found = self.made.get(key)
        if found is not None:
            return found
        chosen = name or f"pm-{uuid.uuid4().hex[:8]}"
        status, _ = self.api.call("GET", f"/api/v1/namespaces/{chosen}")
        if status == 404:
            manifest = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": chosen,
                    "labels": {**labels, MODE_LABEL: mode},
                    "annotations": dict(annotations),
                },
            }
            status, answer = self.api.call("POST", "/api/v1/namespaces", manifest)
            if status >= 300:
                raise ApiError(f"creating namespace {chosen}: {status} {answer}")
        self.control_plane.wait_for(
            lambda: (
                self.api.call("GET", f"/api/v1/namespaces/{chosen}/serviceaccounts/default")[0]
                == 200
            ),
            what=f"the default ServiceAccount in {chosen}",
            # It comes within a few tens of milliseconds; every case waits on it.
            interval=0.02,
        )
        self.made[key] = chosen
        return chosen

    def delete_all(self) -> None:
        for name in self.made.values():
            if name.startswith("pm-"):
                self.api.call("DELETE", f"/api/v1/namespaces/{name}")
        self.made.clear()


@contextlib.contextmanager
def namespaces(api: Api, control_plane: ControlPlane) -> Iterator[Namespaces]:
    made = Namespaces(api, control_plane)
    try:
        yield made
    finally:
        made.delete_all()
