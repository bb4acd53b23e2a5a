"""Events (``events.k8s.io/v1``) written and kept, as kube-apiserver keeps them: for ``serve``'s sender.

Routed where the Events API answers (``api.route(events.PREFIX, store)``),
an :class:`EventStore` takes the two writes client-go's event broadcaster
makes, and ``serve``'s sender with it:

- ``POST .../namespaces/NS/events``: a create, answered 201 with the Event
  (409 AlreadyExists for a name already kept);
- ``PATCH .../namespaces/NS/events/NAME`` with a merge patch
  (``application/merge-patch+json``, RFC 7386): merged into the kept Event,
  answered 200 with it (404 NotFound when none is kept, as for an Event that
  expired; 415 for any other kind of patch, which the store does not apply);
- anything else under the prefix: 405, before any of the knobs below.

Tests make it misbehave: :meth:`EventStore.refuse` answers every write with
a Status (403 as RBAC would, 500...), ``hold`` holds every write unanswered
until ``api.release()`` (an API server that hangs; ``held`` counts the
writes waiting now), after which each is answered as if never held, and
``api.stop()`` cuts them unanswered. What was sent, Content-Type included,
is in the server's record (``api.calls_to(PREFIX)``).
"""

from __future__ import annotations

import contextlib
import json
import threading
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from harness.fake_kube_api.wire import MAX_HOLD_SECONDS, status

if TYPE_CHECKING:
    from harness.fake_kube_api.server import Request

PREFIX = "/apis/events.k8s.io/v1/"
MERGE_PATCH = "application/merge-patch+json"
_NAMESPACES = PREFIX + "namespaces/"


class EventStore:
    """Events by ``(namespace, name)``, a route handler for their creates and merge patches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.refusal: dict[str, Any] | None = None
        self.hold = False
        self.held = 0

    def refuse(self, code: int, message: str) -> None:
        """Answer every write from now on with a ``code`` Status carrying ``message``."""
        self.refusal = status(code, HTTPStatus(code).phrase.replace(" ", ""), message)

    def series_counts(self) -> list[int]:
        """Each kept Event's occurrences: its series count, or 1 without a series."""
        with self._lock:
            return [(e.get("series") or {}).get("count", 1) for e in self.events.values()]

    def __call__(
        self,
        request: Request,
        path: str,
        query: dict[str, str],  # noqa: ARG002 - a route handler's signature; writes take none
    ) -> None:
        namespace, collection, name = _parts(path)
        write = {"POST": not name, "PATCH": bool(name)}.get(request.command, False)
        if not (namespace and collection == "events" and write):
            message = f"{request.command} {path}: the fake Events API creates and patches Events"
            request.send_json(405, status(405, "MethodNotAllowed", message))
            return
        if self.hold and not self._held_until_released(request):
            return  # the server went down meanwhile: no answer at all
        if self.refusal is not None:
            request.send_json(int(self.refusal["code"]), self.refusal)
            return
        content_type = (request.headers.get("Content-Type") or "").split(";")[0]
        body = _json(request.body)
        if request.command == "PATCH" and content_type != MERGE_PATCH:
            message = f"the fake API server applies {MERGE_PATCH} only"
            request.send_json(415, status(415, "UnsupportedMediaType", message))
        elif not isinstance(body, dict):
            request.send_json(400, status(400, "BadRequest", "the body is not a JSON object"))
        elif request.command == "POST":
            request.send_json(*self._create(namespace, body))
        else:
            request.send_json(*self._patch(namespace, name, body))

    def _create(self, namespace: str, body: dict[str, Any]) -> tuple[int, Any]:
        name = str((body.get("metadata") or {}).get("name") or "")
        with self._lock:
            if (namespace, name) in self.events:
                return 409, status(409, "AlreadyExists", f'events "{name}" already exists')
            self.events[namespace, name] = body
            return 201, body

    def _patch(self, namespace: str, name: str, patch: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:
            found = self.events.get((namespace, name))
            if found is None:
                return 404, status(404, "NotFound", f'events "{name}" not found')
            merged = merge_patch(found, patch)
            self.events[namespace, name] = merged
            return 200, merged

    def _held_until_released(self, request: Request) -> bool:
        with self._lock:
            self.held += 1
        try:
            request.api.released.wait(MAX_HOLD_SECONDS)
        finally:
            with self._lock:
                self.held -= 1
        return not request.api.down


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target`` as a JSON merge patch (RFC 7386): ``null`` removes."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _parts(path: str) -> tuple[str, str, str]:
    """``(namespace, collection, name)`` of ``.../namespaces/NS/COLLECTION[/NAME]``, else blanks."""
    if not path.startswith(_NAMESPACES):
        return "", "", ""
    namespace, _, rest = path.removeprefix(_NAMESPACES).partition("/")
    collection, _, name = rest.partition("/")
    return namespace, collection, name


def _json(body: bytes) -> Any:
    with contextlib.suppress(ValueError):
        return json.loads(body or b"{}")
    return None
