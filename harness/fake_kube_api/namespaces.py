"""The Namespace part of the fake API server: state, controls, and the list/watch/get protocol.

The state half (:class:`NamespaceState`) is what tests drive: ``add``,
``modify``, ``delete`` (``emit=False`` for a change the watch never reports,
as if history was lost), ``bookmark``, ``expire`` and ``compact`` to forget
history, broken and silent watches, stalled, held, canned and trickling GETs,
oversized lists and events, lists that never end, padded and slow lists.
The protocol half (:func:`serve`) answers ``/api/v1/namespaces`` the way
kube-apiserver does: a paginated list (``limit``/``continue``) at a
resourceVersion, a chunked newline-delimited watch held open until its
``timeoutSeconds``, ``BOOKMARK`` events, ``410 Gone`` in both forms the API
server uses (an HTTP 410 Status, or an ``ERROR`` event carrying one), and a
404 ``NotFound`` Status for a missing namespace.
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
from typing import TYPE_CHECKING, Any, Literal

from harness.fake_kube_api.wire import MAX_HOLD_SECONDS, CannedReply, status

if TYPE_CHECKING:
    from harness.fake_kube_api.server import Request

GoneAs = Literal["event", "http"]
PREFIX = "/api/v1/namespaces"


@dataclass(frozen=True)
class _Event:
    seq: int
    resource_version: int
    type: str
    obj: dict[str, Any]


def _copy(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


class NamespaceState:
    """Namespaces, their history, and the knobs that make their endpoints misbehave.

    Lists that never end: ``endless_lists`` (every page promises another,
    empty ones once the namespaces run out), ``list_padding`` (each page also
    carries about that many bytes of filler Namespaces, each with its own
    name and many labels), ``list_delay`` (each page answered only after that
    many seconds, or at once after ``release()``). A slow API server's GETs:
    ``get_delay`` (each namespace GET answered only after that many seconds,
    or at once after ``release()``).

    Readable records: ``requests`` counts calls by kind (list, watch, get),
    ``authorizations`` the Authorization headers seen, ``list_limits`` each
    list's ``limit``, ``watch_versions`` the resourceVersion each watch
    resumed from and ``watch_timeouts`` the timeoutSeconds it asked for,
    ``list_bytes_sent`` what the last oversized list managed to send,
    ``reads()`` the namespace each GET asked for and when (``get_names``
    the names alone), ``gets_at_once`` the GETs
    being answered now and ``max_gets_at_once`` the most at any one time.
    """

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
        self._huge_event: int | None = None
        self.gone_as: GoneAs = "event"
        self.stall_gets = threading.Event()
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
        self.get_delay = 0.0
        self._reads: list[tuple[str, float]] = []
        self.gets_at_once = 0
        self.max_gets_at_once = 0
        self.list_bytes_sent = 0
        self.watch_versions: list[str | None] = []
        self.watch_timeouts: list[float] = []
        self.list_limits: list[int | None] = []
        self.requests: Counter[str] = Counter()
        self.authorizations: set[str] = set()

    def reads(self) -> list[tuple[str, float]]:
        """Each namespace GET so far: the name it asked for and when (``time.monotonic``)."""
        with self._cond:
            return list(self._reads)

    @property
    def get_names(self) -> list[str]:
        """The name each namespace GET so far asked for."""
        return [name for name, _ in self.reads()]

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
        phase: str | None = None,
    ) -> None:
        """Create namespace ``name`` (an ADDED event unless ``emit`` is false), in ``phase`` if given."""
        metadata: dict[str, Any] = {"name": name, "uid": f"uid-{name}"}
        if labels is not None:
            metadata["labels"] = dict(labels)
        if annotations is not None:
            metadata["annotations"] = dict(annotations)
        obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}
        if phase is not None:
            obj["status"] = {"phase": phase}
        self._change("ADDED", obj, emit)

    def modify(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        *,
        emit: bool = True,
    ) -> None:
        """Replace the labels and annotations of ``name`` (a MODIFIED event)."""
        with self._cond:
            obj = _copy(self._objects[name])
        obj["metadata"]["labels"] = dict(labels or {})
        obj["metadata"]["annotations"] = dict(annotations or {})
        self._change("MODIFIED", obj, emit)

    def delete(self, name: str, *, emit: bool = True) -> None:
        """Remove ``name`` (a DELETED event)."""
        with self._cond:
            obj = _copy(self._objects[name])
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
                self._record(kind, _copy(obj))

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        self._seq += 1
        self._history.append(_Event(self._seq, self._rv, kind, obj))
        self._cond.notify_all()

    def wait_while(self, flag: threading.Event) -> bool:
        """Block while ``flag`` is set; False when the server went down meanwhile."""
        deadline = time.monotonic() + MAX_HOLD_SECONDS
        with self._cond:
            while flag.is_set() and not self._down and time.monotonic() < deadline:
                self._cond.wait(0.05)
            return not self._down


# --- the protocol ---------------------------------------------------------------------


def serve(request: Request, path: str, query: dict[str, str]) -> None:
    """Answer a GET under ``/api/v1/namespaces``: a list, a watch, or one namespace."""
    api = request.api
    if path == PREFIX:
        if query.get("watch", "").lower() in ("true", "1"):
            api.requests["watch"] += 1
            _watch(request, query)
        else:
            api.requests["list"] += 1
            _list(request, query)
    elif path.startswith(PREFIX + "/"):
        api.requests["get"] += 1
        name = path[len(PREFIX) + 1 :]
        with api._cond:
            api._reads.append((name, time.monotonic()))
            api.gets_at_once += 1
            api.max_gets_at_once = max(api.max_gets_at_once, api.gets_at_once)
        try:
            _get(request, name)
        finally:
            with api._cond:
                api.gets_at_once -= 1
    else:
        request.send_json(404, status(404, "NotFound", f"no route for {path}"))


def _list(request: Request, query: dict[str, str]) -> None:
    api = request.api
    limit = int(query["limit"]) if query.get("limit") else None
    api.list_limits.append(limit)
    if api.huge_lists is not None:
        _huge_list(request, api.huge_lists)
        return
    # A slow page waits out its delay, unless the server is released first.
    if api.list_delay and api.released.wait(api.list_delay) and api.down:
        return  # the server went down meanwhile: no answer at all
    token = query.get("continue")
    remaining: list[dict[str, Any]]
    with api._cond:
        if token and token.startswith("endless:"):
            rv, remaining = api._rv, []
        elif token:
            snapshot = api._snapshots.get(token.split(":")[0])
            if api.continue_gone_once:
                api.continue_gone_once = False
                snapshot = None  # compacted away between two pages
            if snapshot is None:
                request.send_json(410, status(410, "Expired", "the continue token expired"))
                return
            rv, remaining = snapshot
        else:
            # A consistent snapshot, paged out of as the real server does.
            rv = api._rv
            remaining = [_copy(api._objects[k]) for k in sorted(api._objects)]
        page, rest = (remaining, []) if limit is None else (remaining[:limit], remaining[limit:])
        metadata: dict[str, Any] = {"resourceVersion": str(rv)}
        if rest:
            key = str(next(api._snapshot_ids))
            api._snapshots[key] = (rv, rest)
            metadata["continue"] = f"{key}:{len(rest)}"
        elif api.endless_lists:
            metadata["continue"] = f"endless:{next(api._snapshot_ids)}"
        padding, number = api.list_padding, next(api._snapshot_ids)
    items = page + _filler(padding, page=number)
    request.send_json(
        200, {"kind": "NamespaceList", "apiVersion": "v1", "metadata": metadata, "items": items}
    )


def _filler(size: int, *, page: int) -> list[dict[str, Any]]:
    """Namespaces of about ``size`` bytes in all as JSON, each named apart, each with 50 labels."""
    if size <= 0:
        return []
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


def _huge_list(request: Request, size: int) -> None:
    """A well-formed start of a list that goes on for ``size`` bytes (chunked, no length)."""
    api = request.api
    request.start_chunked(200)
    head = b'{"kind":"NamespaceList","metadata":{"resourceVersion":"1"},"items":['
    item = b'{"metadata":{"name":"filler","labels":{"a":"' + b"x" * 4000 + b'"}}},'
    sent = 0
    api.list_bytes_sent = 0
    with contextlib.suppress(OSError):
        request.chunk(head)
        sent += len(head)
        while sent < size:
            request.chunk(item * 16)
            sent += len(item) * 16
            api.list_bytes_sent = sent
        request.chunk(b"]}")
        request.end_chunks()


def _get(request: Request, name: str) -> None:
    api = request.api
    if not api.wait_while(api.stall_gets):
        return
    # A slow GET waits out its delay, unless the server is released first.
    if api.get_delay and api.released.wait(api.get_delay) and api.down:
        return  # the server went down meanwhile: no answer at all
    canned = api.get_reply
    if canned is not None:
        request.send_raw(canned.status, canned.body, canned.headers)
        return
    with api._cond:
        obj = api._objects.get(name)
        body = _copy(obj) if obj is not None else None
    if api.hold_get_replies.is_set():
        with api._cond:
            api.held_gets += 1
            api._cond.notify_all()
        if not api.wait_while(api.hold_get_replies):
            return
    if api.trickle_gets:
        request.trickle()
    elif body is None:
        request.send_json(404, status(404, "NotFound", f'namespaces "{name}" not found'))
    else:
        request.send_json(200, body)


def _watch(request: Request, query: dict[str, str]) -> None:
    api = request.api
    timeout = float(query.get("timeoutSeconds", "1800"))
    bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
    deadline = time.monotonic() + timeout
    api.watch_versions.append(query.get("resourceVersion"))
    api.watch_timeouts.append(timeout)
    with api._cond:
        since = int(query.get("resourceVersion") or api._rv)
        if since < api._oldest:
            gone = status(410, "Expired", f"too old resource version: {since} ({api._oldest})")
            if api.gone_as == "http":
                request.send_json(410, gone)
                return
        else:
            gone = None
        if api.watch_error is not None:
            code, message = api.watch_error
            gone = status(code, "InternalError", message)
        epoch = api._epoch
        # Replay what happened after `since`, then follow new events.
        seq = next((e.seq - 1 for e in api._history if e.resource_version > since), api._seq)
        watch_id = next(api._watch_ids)
        api._watch_sockets[watch_id] = request.connection
    try:
        request.start_chunked(200)
        if gone is not None:
            request.chunk_json({"type": "ERROR", "object": gone})
            request.end_chunks()
            return
        _follow(request, watch_id, seq, epoch, deadline, bookmarks)
    except OSError:
        return
    finally:
        with api._cond:
            api._watch_sockets.pop(watch_id, None)
            api._silenced.discard(watch_id)
            api._broken.discard(watch_id)


def _follow(
    request: Request, watch_id: int, seq: int, epoch: int, deadline: float, bookmarks: bool
) -> None:
    api = request.api
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
            request.chunk(b'{"type":"ADDED","object":{"pad":"' + b"x" * huge)
        for event in pending:
            seq = event.seq
            if event.type == "BOOKMARK" and not bookmarks:
                continue
            request.chunk_json({"type": event.type, "object": event.obj})
    with api._cond:
        if api._down:
            return  # a crashed server does not end its streams politely
    request.end_chunks()
