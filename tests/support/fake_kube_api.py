"""A real HTTP server that speaks just enough of the Kubernetes API for Namespaces.

The namespace cache is tested against this rather than a patched client, so
the official ``kubernetes`` client makes real requests: a paginated list
(``limit``/``continue``) with a resourceVersion, a chunked newline-delimited
watch held open until its ``timeoutSeconds``, ``BOOKMARK`` events, ``410 Gone``
in both forms the API server uses (an HTTP 410 Status, or an ``ERROR`` event
carrying one), and a 404 ``NotFound`` Status for a missing namespace.

Tests drive it in-process:

- state: ``add``/``modify``/``delete`` (with ``emit=False`` for a change the
  watch never reports, as if history was lost), ``bookmark``, ``expire`` to
  forget history;
- outages: ``stop``/``restart`` on the same port;
- broken watches: ``watch_error`` (every watch answered with one ERROR event),
  ``break_watches`` (streams cut mid-way, as a network blip), ``silence_watches``
  (streams that stay open and say nothing, as a half-open connection),
  ``end_watches`` (streams ended politely, as the server-side timeout);
- bad answers: ``stall_gets`` (a GET that hangs), ``get_delay`` (every GET
  answered only after that long, as a slow API server), ``hold_get_replies``
  (a GET that has read the object but not answered yet), ``get_reply`` (a
  canned raw answer), ``trickle_gets`` (a body that never finishes), ``huge_lists`` and
  ``huge_event`` (bodies far over any sane size), ``continue_gone_once`` (a
  list's continue token that expires between two pages);
- lists that never end: ``endless_lists`` (every page promises another,
  empty ones once the namespaces run out), ``list_padding`` (each page also
  carries about that many bytes of filler Namespaces, each with its own name
  and many labels), ``list_delay`` (each page answered only after that long);
- ``version``: what ``GET /version`` says (``None``: 404), so ``check`` gets
  past its first check;
- what happened: ``requests`` counts calls by kind (list, watch, get),
  ``get_names`` the namespace each GET asked for, ``max_gets_at_once`` the
  most GETs being answered at one time,
  ``authorizations`` the Authorization headers seen, ``list_limits`` each
  list's ``limit``,
  ``watch_versions`` the resourceVersion each watch resumed from and
  ``watch_timeouts`` the timeoutSeconds it asked for,
  ``list_bytes_sent`` what the last oversized list managed to send.
"""

from __future__ import annotations

import contextlib
import itertools
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
# No request in a test should be held longer than this, whatever the test forgets.
_MAX_HOLD_SECONDS = 60.0


@dataclass(frozen=True)
class _Event:
    seq: int
    resource_version: int
    type: str
    obj: dict[str, Any]


@dataclass(frozen=True)
class CannedReply:
    """A raw answer for GETs: status, body bytes, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)


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


def _filler(size: int, *, page: int) -> list[dict[str, Any]]:
    """Namespaces of about ``size`` bytes in all as JSON, each named apart, each with 50 labels."""
    labels = {f"filler.example.com/label-{i:02d}": "v" * 40 for i in range(50)}
    one = len(json.dumps(labels)) + 120
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": f"filler-{page}-{index}", "labels": labels},
        }
        for index in range(size // one)
    ]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-answer is what several tests do on purpose;
        # the default handler would print a traceback into the test output.
        pass


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
        self._watch_sockets: dict[int, socket.socket] = {}
        self._silenced: set[int] = set()
        self._broken: set[int] = set()
        self._watch_ids = itertools.count(1)
        self._snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._snapshot_ids = itertools.count(1)
        self.gone_as: GoneAs = "event"
        self.stall_gets = threading.Event()
        self.get_delay = 0.0
        self.get_names: list[str] = []
        self.gets_at_once = 0
        self.max_gets_at_once = 0
        self.hold_get_replies = threading.Event()
        self.held_gets = 0
        self.get_reply: CannedReply | None = None
        self.trickle_gets = False
        self.watch_error: tuple[int, str] | None = None
        self.huge_lists: int | None = None
        self.continue_gone_once = False
        self.endless_lists = False
        self.list_padding = 0
        self.list_delay = 0.0
        self.version: str | None = "v1.33.0"
        self.list_bytes_sent = 0
        self._huge_event: int | None = None
        self.watch_versions: list[str | None] = []
        self.watch_timeouts: list[float] = []
        self.list_limits: list[int | None] = []
        self.requests: Counter[str] = Counter()
        self.authorizations: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FakeKubeAPI:
        """Listen (on a free port the first time, on the same port after ``stop``)."""
        api = self

        class Handler(_Handler):
            owner = api

        server = _Server(("127.0.0.1", self.port), Handler)
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

    def compact(self) -> None:
        """Forget history up to now without touching open watches (etcd compaction).

        A watch resumed from an older resourceVersion then gets 410; one resumed
        from the current version does not.
        """
        with self._cond:
            self._history.clear()
            self._oldest = self._rv

    def end_watches(self) -> None:
        """End open watches normally, as their server-side timeout would."""
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()

    def break_watches(self) -> None:
        """Cut open watch streams mid-way (no final chunk), as a network blip would."""
        with self._cond:
            sockets = list(self._watch_sockets.values())
            # Their handlers notice only when they next write; tell them now.
            self._broken.update(self._watch_sockets)
            self._cond.notify_all()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def silence_watches(self) -> None:
        """Open watches stay open and send nothing more (a half-open connection).

        New watches work normally. A silenced stream ends only when the server
        stops or ``break_watches`` cuts it.
        """
        with self._cond:
            self._silenced.update(self._watch_sockets)
            self._cond.notify_all()

    @property
    def open_watches(self) -> int:
        with self._cond:
            return len(self._watch_sockets)

    def huge_event(self, size: int) -> None:
        """Send open watches one line of ``size`` bytes that never ends in a newline."""
        with self._cond:
            self._huge_event = size
            self._cond.notify_all()

    def release_gets(self) -> None:
        """Let stalled and held GETs answer."""
        self.stall_gets.clear()
        self.hold_get_replies.clear()
        with self._cond:
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

    def _wait_while(self, flag: threading.Event) -> bool:
        """Block while ``flag`` is set; False when the server went down meanwhile."""
        deadline = time.monotonic() + _MAX_HOLD_SECONDS
        with self._cond:
            while flag.is_set() and not self._down and time.monotonic() < deadline:
                self._cond.wait(0.05)
            return not self._down


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
        if self.headers.get("Authorization"):
            api.authorizations.add(self.headers["Authorization"])
        if parts.path == "/version" and api.version is not None:
            major, minor = api.version.lstrip("v").split(".")[:2]
            self._send_json(200, {"major": major, "minor": minor, "gitVersion": api.version})
        elif parts.path == _PREFIX:
            if query.get("watch", "").lower() in ("true", "1"):
                api.requests["watch"] += 1
                self._watch(query)
            else:
                api.requests["list"] += 1
                self._list(query)
        elif parts.path.startswith(_PREFIX + "/"):
            api.requests["get"] += 1
            name = parts.path[len(_PREFIX) + 1 :]
            with api._cond:
                api.get_names.append(name)
                api.gets_at_once += 1
                api.max_gets_at_once = max(api.max_gets_at_once, api.gets_at_once)
            try:
                self._get(name)
            finally:
                with api._cond:
                    api.gets_at_once -= 1
        else:
            self._send_json(404, _status(404, "NotFound", f"no route for {parts.path}"))

    def _send_json(self, code: int, body: dict[str, Any]) -> None:
        self._send_raw(code, json.dumps(body).encode(), (("Content-Type", "application/json"),))

    def _send_raw(self, code: int, data: bytes, headers: tuple[tuple[str, str], ...]) -> None:
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _list(self, query: dict[str, str]) -> None:
        api = self.owner
        limit = int(query["limit"]) if query.get("limit") else None
        api.list_limits.append(limit)
        if api.huge_lists is not None:
            self._huge_list(api.huge_lists)
            return
        token = query.get("continue")
        with api._cond:
            deadline = time.monotonic() + api.list_delay
            while not api._down and (left := deadline - time.monotonic()) > 0:
                api._cond.wait(left)
            if token and token.startswith("endless:"):
                rv, remaining = api._rv, []
            elif token:
                snapshot = api._snapshots.get(token.split(":")[0])
                if api.continue_gone_once:
                    api.continue_gone_once = False
                    snapshot = None  # compacted away between two pages
                if snapshot is None:
                    self._send_json(410, _status(410, "Expired", "the continue token expired"))
                    return
                rv, remaining = snapshot
            else:
                # A consistent snapshot, paged out of as the real server does.
                rv = api._rv
                remaining = [json.loads(json.dumps(api._objects[k])) for k in sorted(api._objects)]
            page, rest = (
                (remaining, []) if limit is None else (remaining[:limit], remaining[limit:])
            )
            metadata: dict[str, Any] = {"resourceVersion": str(rv)}
            if rest:
                key = str(next(api._snapshot_ids))
                api._snapshots[key] = (rv, rest)
                metadata["continue"] = f"{key}:{len(rest)}"
            elif api.endless_lists:
                metadata["continue"] = f"endless:{next(api._snapshot_ids)}"
            padding, number = api.list_padding, next(api._snapshot_ids)
        self._send_json(
            200,
            {
                "kind": "NamespaceList",
                "apiVersion": "v1",
                "metadata": metadata,
                "items": page + _filler(padding, page=number),
            },
        )

    def _huge_list(self, size: int) -> None:
        """A well-formed start of a list that goes on for ``size`` bytes (chunked, no length)."""
        api = self.owner
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        head = b'{"kind":"NamespaceList","metadata":{"resourceVersion":"1"},"items":['
        item = b'{"metadata":{"name":"filler","labels":{"a":"' + b"x" * 4000 + b'"}}},'
        sent = 0
        api.list_bytes_sent = 0
        with contextlib.suppress(OSError):
            self._raw_chunk(head)
            sent += len(head)
            while sent < size:
                self._raw_chunk(item * 16)
                sent += len(item) * 16
                api.list_bytes_sent = sent
            self._raw_chunk(b"]}")
            self._end_chunks()

    def _get(self, name: str) -> None:
        api = self.owner
        if not api._wait_while(api.stall_gets):
            return
        with api._cond:
            answer_at = time.monotonic() + api.get_delay
            while not api._down and (left := answer_at - time.monotonic()) > 0:
                api._cond.wait(left)
        canned = api.get_reply
        if canned is not None:
            self._send_raw(canned.status, canned.body, canned.headers)
            return
        with api._cond:
            obj = api._objects.get(name)
            body = json.loads(json.dumps(obj)) if obj is not None else None
        if api.hold_get_replies.is_set():
            with api._cond:
                api.held_gets += 1
                api._cond.notify_all()
            if not api._wait_while(api.hold_get_replies):
                return
        if api.trickle_gets:
            self._trickle()
        elif body is None:
            self._send_json(404, _status(404, "NotFound", f'namespaces "{name}" not found'))
        else:
            self._send_json(200, body)

    def _trickle(self) -> None:
        """Promise a body and send it a byte at a time, for as long as the client listens."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        deadline = time.monotonic() + _MAX_HOLD_SECONDS
        with contextlib.suppress(OSError):
            self.wfile.write(b"{")
            self.wfile.flush()
            while time.monotonic() < deadline and not self.owner._down:
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.05)

    def _raw_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _chunk(self, payload: dict[str, Any]) -> None:
        self._raw_chunk(json.dumps(payload).encode() + b"\n")

    def _watch(self, query: dict[str, str]) -> None:
        api = self.owner
        timeout = float(query.get("timeoutSeconds", "1800"))
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        deadline = time.monotonic() + timeout
        api.watch_versions.append(query.get("resourceVersion"))
        api.watch_timeouts.append(timeout)
        with api._cond:
            since = int(query.get("resourceVersion") or api._rv)
            if since < api._oldest:
                gone = _status(410, "Expired", f"too old resource version: {since} ({api._oldest})")
                if api.gone_as == "http":
                    self._send_json(410, gone)
                    return
            else:
                gone = None
            if api.watch_error is not None:
                code, message = api.watch_error
                gone = _status(code, "InternalError", message)
            epoch = api._epoch
            # Replay what happened after `since`, then follow new events.
            seq = next((e.seq - 1 for e in api._history if e.resource_version > since), api._seq)
            watch_id = next(api._watch_ids)
            api._watch_sockets[watch_id] = self.connection
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if gone is not None:
                self._chunk({"type": "ERROR", "object": gone})
                self._end_chunks()
                return
            self._follow(watch_id, seq, epoch, deadline, bookmarks)
        except OSError:
            return
        finally:
            with api._cond:
                api._watch_sockets.pop(watch_id, None)
                api._silenced.discard(watch_id)
                api._broken.discard(watch_id)

    def _follow(
        self, watch_id: int, seq: int, epoch: int, deadline: float, bookmarks: bool
    ) -> None:
        api = self.owner
        while True:
            with api._cond:
                if watch_id in api._broken:
                    return
                if watch_id in api._silenced:
                    # Half-open: nothing more, not even the end of the stream.
                    while not api._down and watch_id not in api._broken:
                        api._cond.wait(0.2)
                    return
                huge, api._huge_event = api._huge_event, None
                pending = [e for e in api._history if e.seq > seq]
                ended = api._down or api._epoch != epoch or time.monotonic() >= deadline
                if not pending and huge is None:
                    if ended:
                        break
                    api._cond.wait(min(0.2, max(0.0, deadline - time.monotonic())))
                    continue
            if huge is not None:
                self._raw_chunk(b'{"type":"ADDED","object":{"pad":"' + b"x" * huge)
            for event in pending:
                seq = event.seq
                if event.type == "BOOKMARK" and not bookmarks:
                    continue
                self._chunk({"type": event.type, "object": event.obj})
        with api._cond:
            if api._down:
                return  # a crashed server does not end its streams politely
        self._end_chunks()

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
