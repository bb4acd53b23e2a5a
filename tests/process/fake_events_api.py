"""The fake API server of ``fake_kube_api``, plus the Events API (``events.k8s.io/v1``) writes.

What ``serve`` needs of a cluster that it writes Events to: the namespaces
(list, watch, get, from ``FakeKubeAPI``) and ``POST``/``PATCH`` of Events,
which are kept (``events``) and recorded as sent (``writes``: method, path,
content type, body). Tests make the Events API misbehave:

- ``write_status``: answer every write with this HTTP status and a Status
  body (403 as RBAC would, 500...), ``None`` to accept;
- ``hold_writes``: while set, every write is held unanswered (an API server
  that hangs); ``held`` counts the writes being held right now;
- ``release_writes``: let held writes go (answered as if never held).

``FakeWriter`` stands in for the Events API client itself (no HTTP), for
the tests of the sender.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.support.fake_kube_api import FakeKubeAPI, _Handler, _Server, _status

EVENTS_PREFIX = "/apis/events.k8s.io/v1/namespaces/"
_MAX_HOLD_SECONDS = 60.0


@dataclass(frozen=True)
class Write:
    """One write the fake received."""

    method: str
    path: str
    content_type: str
    body: dict[str, Any]


class FakeEventsAPI(FakeKubeAPI):
    """Namespaces as ``FakeKubeAPI`` serves them, and Events written and kept."""

    def __init__(self) -> None:
        super().__init__()
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[Write] = []
        self.write_status: int | None = None
        self.hold_writes = threading.Event()
        self.held = 0

    def start(self) -> FakeEventsAPI:
        api = self

        class Handler(_EventsHandler):
            owner = api

        server = _Server(("127.0.0.1", self.port), Handler)
        self.port = server.server_address[1]
        with self._cond:
            self._down = False
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def release_writes(self) -> None:
        """Let held writes be answered."""
        self.hold_writes.clear()
        with self._cond:
            self._cond.notify_all()

    def series_counts(self) -> list[int]:
        """Each kept Event's occurrences: its series count, or 1 without a series."""
        with self._cond:
            return [(e.get("series") or {}).get("count", 1) for e in self.events.values()]

    def _hold(self) -> bool:
        """Block while writes are held; False when the server went down meanwhile."""
        deadline = time.monotonic() + _MAX_HOLD_SECONDS
        with self._cond:
            self.held += 1
            try:
                while self.hold_writes.is_set() and not self._down:
                    if time.monotonic() > deadline:
                        break
                    self._cond.wait(0.05)
            finally:
                self.held -= 1
            return not self._down


class _EventsHandler(_Handler):
    owner: FakeEventsAPI

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self._write("POST")

    def do_PATCH(self) -> None:  # noqa: N802 - http.server's name
        self._write("PATCH")

    def _write(self, method: str) -> None:
        api = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        content_type = self.headers.get("Content-Type") or ""
        with api._cond:
            api.writes.append(Write(method, self.path, content_type, body))
        if not self.path.startswith(EVENTS_PREFIX):
            self._send_json(404, _status(404, "NotFound", f"no route for {self.path}"))
            return
        if api.hold_writes.is_set() and not api._hold():
            return
        if api.write_status is not None:
            code = api.write_status
            self._send_json(code, _status(code, "Forbidden", "events are refused here"))
            return
        namespace, _, rest = self.path[len(EVENTS_PREFIX) :].partition("/events")
        with api._cond:
            if method == "POST":
                key = (namespace, body["metadata"]["name"])
                if key in api.events:
                    self._send_json(409, _status(409, "AlreadyExists", "exists"))
                    return
                api.events[key] = body
                self._send_json(201, body)
                return
            key = (namespace, rest.lstrip("/"))
            found = api.events.get(key)
            if found is None:
                self._send_json(404, _status(404, "NotFound", "the event is gone"))
                return
            found.update(body)
            self._send_json(200, found)


# --- a writer without HTTP, for the recorder's tests ---------------------------------------


class WriteFailed(Exception):
    """What the fake raises; ``not_found`` as the real writer's error has it."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass
class FakeWriter:
    """Keeps what it is asked to write; can hang (``gate`` cleared) or fail (``failure``)."""

    creates: list[dict[str, Any]] = field(default_factory=list)
    patches: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)
    failure: WriteFailed | None = None
    patch_failure: WriteFailed | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    closed: bool = False

    def __post_init__(self) -> None:
        self.gate.set()

    def create(self, event: Mapping[str, Any], *, timeout: float) -> None:
        self._enter(timeout)
        if self.failure is not None:
            raise self.failure
        self.creates.append(dict(event))

    def patch(self, namespace: str, name: str, patch: Mapping[str, Any], *, timeout: float) -> None:
        self._enter(timeout)
        failure = self.failure or self.patch_failure
        if failure is not None:
            raise failure
        self.patches.append((namespace, name, dict(patch)))

    def close(self) -> None:
        self.closed = True

    def _enter(self, timeout: float) -> None:
        self.timeouts.append(timeout)
        self.entered.release()
        self.gate.wait(30)

    def last_count(self) -> int:
        """The count the API server would show for the one Event written."""
        if self.patches:
            return int(self.patches[-1][2]["series"]["count"])
        return int((self.creates[-1].get("series") or {}).get("count", 1))
