"""A real HTTP server that speaks just enough of the Kubernetes API for Namespaces.

The namespace cache is tested against this rather than a patched client, so
the official ``kubernetes`` client makes real requests: list with a
resourceVersion, a chunked newline-delimited watch held open until its
``timeoutSeconds``, ``BOOKMARK`` events, ``410 Gone`` in both forms the API
server uses (an HTTP 410 Status, or an ``ERROR`` event carrying one), and a
404 Status for a missing namespace.

Tests drive it in-process: ``add``/``modify``/``delete`` (with ``emit=False``
for a change the watch never reports, as if history was lost), ``expire`` to
forget history, ``stop``/``restart`` on the same port for an API server
outage, ``stall_gets`` for one that hangs, and ``requests`` counting calls by
kind (list, watch, get).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

GoneAs = Literal["event", "http"]
_PREFIX = "/api/v1/namespaces"


@dataclass(frozen=True)
class _Event:
    seq: int
    resource_version: int
    type: str
    obj: dict[str, Any]


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeKubeAPI:
    """The Namespace part of an API server, on 127.0.0.1, controllable from tests."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._objects: dict[str, dict[str, Any]] = {}
        self._rv = 100
        self._seq = 0
        self._history: list[_Event] = []
        self._oldest = 0  # a watch from a resourceVersion below this gets 410
        self._epoch = 0  # bumped to end every open watch
        self._down = False
        self._sockets: set[socket.socket] = set()
        self.gone_as: GoneAs = "event"
        self.stall_gets = threading.Event()
        self.requests: Counter[str] = Counter()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FakeKubeAPI:
        """Listen (on a free port the first time, on the same port after ``stop``)."""
        api = self

        class Handler(_Handler):
            owner = api

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self.port = server.server_address[1]
        with self._cond:
            self._down = False
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Go down: refuse connections and cut every open one (as a crashed API server)."""
        server, self._server = self._server, None
        with self._cond:
            self._down = True
            self._cond.notify_all()
            sockets = list(self._sockets)
        if server is not None:
            server.shutdown()
            server.server_close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def restart(self) -> None:
        """Come back on the same port with the same state."""
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- state -----------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        with self._cond:
            return str(self._rv)

    def add(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        *,
        emit: bool = True,
    ) -> None:
        metadata: dict[str, Any] = {"name": name, "uid": f"uid-{name}"}
        if labels is not None:
            metadata["labels"] = dict(labels)
        if annotations is not None:
            metadata["annotations"] = dict(annotations)
        self._change("ADDED", {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}, emit)

    def modify(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        *,
        emit: bool = True,
    ) -> None:
        with self._cond:
            obj = json.loads(json.dumps(self._objects[name]))
        obj["metadata"]["labels"] = dict(labels or {})
        obj["metadata"]["annotations"] = dict(annotations or {})
        self._change("MODIFIED", obj, emit)

    def delete(self, name: str, *, emit: bool = True) -> None:
        with self._cond:
            obj = json.loads(json.dumps(self._objects[name]))
        self._change("DELETED", obj, emit)

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current resourceVersion to watches that allow them."""
        with self._cond:
            obj: dict[str, Any] = {
                "kind": "Namespace",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._rv)},
            }
            self._record("BOOKMARK", obj)

    def expire(self, *, gone_as: GoneAs = "event") -> None:
        """Forget all history and end open watches: a watch from an older version gets 410."""
        with self._cond:
            self.gone_as = gone_as
            self._history.clear()
            self._oldest = self._rv
            self._epoch += 1
            self._cond.notify_all()

    def end_watches(self) -> None:
        """End open watches normally, as their server-side timeout would."""
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()

    def _change(self, kind: str, obj: dict[str, Any], emit: bool) -> None:
        with self._cond:
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            name = obj["metadata"]["name"]
            if kind == "DELETED":
                self._objects.pop(name)
            else:
                self._objects[name] = obj
            if emit:
                self._record(kind, json.loads(json.dumps(obj)))

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        self._seq += 1
        self._history.append(_Event(self._seq, self._rv, kind, obj))
        self._cond.notify_all()


class _Handler(BaseHTTPRequestHandler):
    owner: FakeKubeAPI
    protocol_version = "HTTP/1.1"  # keep-alive and chunked responses, as the real server

    def setup(self) -> None:
        super().setup()
        with self.owner._cond:
            self.owner._sockets.add(self.connection)

    def finish(self) -> None:
        with self.owner._cond:
            self.owner._sockets.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        api = self.owner
        if parts.path == _PREFIX:
            if query.get("watch", "").lower() in ("true", "1"):
                api.requests["watch"] += 1
                self._watch(query)
            else:
                api.requests["list"] += 1
                self._list()
        elif parts.path.startswith(_PREFIX + "/"):
            api.requests["get"] += 1
            self._get(parts.path[len(_PREFIX) + 1 :])
        else:
            self._send_json(404, _status(404, "NotFound", f"no route for {parts.path}"))

    def _send_json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _list(self) -> None:
        api = self.owner
        with api._cond:
            items = [json.loads(json.dumps(obj)) for obj in api._objects.values()]
            rv = str(api._rv)
        self._send_json(
            200,
            {
                "kind": "NamespaceList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": rv},
                "items": items,
            },
        )

    def _get(self, name: str) -> None:
        api = self.owner
        deadline = time.monotonic() + 10
        while api.stall_gets.is_set() and time.monotonic() < deadline:
            with api._cond:
                if api._down:
                    return
            time.sleep(0.02)
        with api._cond:
            obj = api._objects.get(name)
            body = json.loads(json.dumps(obj)) if obj is not None else None
        if body is None:
            self._send_json(404, _status(404, "NotFound", f'namespaces "{name}" not found'))
        else:
            self._send_json(200, body)

    def _chunk(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, query: dict[str, str]) -> None:
        api = self.owner
        timeout = float(query.get("timeoutSeconds", "1800"))
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        deadline = time.monotonic() + timeout
        with api._cond:
            since = int(query.get("resourceVersion") or api._rv)
            if since < api._oldest:
                gone = _status(410, "Expired", f"too old resource version: {since} ({api._oldest})")
                if api.gone_as == "http":
                    self._send_json(410, gone)
                    return
            else:
                gone = None
            epoch = api._epoch
            # Replay what happened after `since`, then follow new events.
            seq = next((e.seq - 1 for e in api._history if e.resource_version > since), api._seq)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if gone is not None:
                self._chunk({"type": "ERROR", "object": gone})
                self._end_chunks()
                return
            while True:
                with api._cond:
                    pending = [e for e in api._history if e.seq > seq]
                    ended = api._down or api._epoch != epoch or time.monotonic() >= deadline
                    if not pending:
                        if ended:
                            break
                        api._cond.wait(min(0.2, max(0.0, deadline - time.monotonic())))
                        continue
                for event in pending:
                    seq = event.seq
                    if event.type == "BOOKMARK" and not bookmarks:
                        continue
                    self._chunk({"type": event.type, "object": event.obj})
            with api._cond:
                if api._down:
                    return  # a crashed server does not end its streams politely
            self._end_chunks()
        except OSError:
            return

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
