"""The fake API server itself: a threaded HTTP server on 127.0.0.1, its routes and its record.

A request (``GET``, ``POST`` or ``PATCH``) is answered by the first route
whose prefix its path starts with (:meth:`FakeKubeAPI.route`), else by
``GET /version`` (``version``), else by the Namespace endpoints, else with a
404 Status. A route handler is called
as ``handler(request, path, query)`` with the :class:`Request` (a
``BaseHTTPRequestHandler`` with helpers to send JSON, raw bytes and chunks,
and to read the body), the path and the query (last value of each
parameter); :mod:`harness.fake_kube_api.handlers` has ready-made ones.
Every request is recorded in ``calls``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from harness.fake_kube_api import namespaces
from harness.fake_kube_api.namespaces import NamespaceState
from harness.fake_kube_api.wire import MAX_HOLD_SECONDS, version_info

Handler = Callable[["Request", str, dict[str, str]], None]


@dataclass(frozen=True)
class Call:
    """One request as the server saw it (``body`` parsed when it was JSON).

    ``content_type`` is the request's Content-Type header (``None`` without
    one): what tells a merge patch from a JSON patch of the same body.
    """

    method: str
    path: str
    query: dict[str, str]
    body: Any = None
    content_type: str | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-answer is what several tests do on purpose;
        # the default handler would print a traceback into the test output.
        pass


class FakeKubeAPI(NamespaceState):
    """An API server on 127.0.0.1 that tests script: Namespaces built in, anything else by route.

    Lifecycle: :meth:`start` (a free port the first time, the same one after
    :meth:`stop`), :meth:`stop` (refuse connections and cut every open one,
    as a crashed API server), :meth:`restart`. ``released`` is set by
    :meth:`stop` and :meth:`release`, so handlers that hold a request wait
    on it and never outlive the test.

    ``version`` is the ``gitVersion`` that ``GET /version`` reports, as every
    kube-apiserver does and as clients ask first (``None``: a 404 instead).
    """

    def __init__(self) -> None:
        super().__init__()
        self.routes: list[tuple[str, Handler]] = []
        self.calls: list[Call] = []
        self.released = threading.Event()
        self.version: str | None = "v1.33.0"
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FakeKubeAPI:
        """Listen (on a free port the first time, on the same port after ``stop``)."""
        api = self

        class BoundRequest(Request):
            owner = api

        server = _Server(("127.0.0.1", self.port), BoundRequest)
        self.port = server.server_address[1]
        with self._cond:
            self._down = False
        self.released.clear()
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Go down: refuse connections and cut every open one (as a crashed API server)."""
        server, self._server = self._server, None
        self.released.set()
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

    def release(self) -> None:
        """Let every request a handler holds until release go on (see ``released``)."""
        self.released.set()

    def __enter__(self) -> FakeKubeAPI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def down(self) -> bool:
        """Whether :meth:`stop` was called and no :meth:`start` since."""
        with self._cond:
            return self._down

    # -- scripting ---------------------------------------------------------------

    def route(self, prefix: str, handler: Handler) -> FakeKubeAPI:
        """Answer requests whose path starts with ``prefix`` with ``handler`` (first match wins)."""
        self.routes.append((prefix, handler))
        return self

    def write_kubeconfig(
        self, path: Path, *, token: str = "t", namespace: str | None = None
    ) -> Path:
        """A kubeconfig for this server with a bearer ``token``; returns ``path``.

        ``namespace``: the context's namespace, which commands use when not given one.
        """
        context = {"cluster": "fake", "user": "fake"}
        if namespace is not None:
            context["namespace"] = namespace
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": token}}],
                    "contexts": [{"name": "fake", "context": context}],
                    "current-context": "fake",
                }
            )
        )
        return path

    def calls_to(self, prefix: str) -> list[Call]:
        """The recorded calls whose path starts with ``prefix``."""
        return [call for call in list(self.calls) if call.path.startswith(prefix)]

    def wait_for_calls(self, prefix: str, count: int, *, timeout: float = 30.0) -> list[Call]:
        """Poll until ``count`` calls to ``prefix`` arrived; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(found := self.calls_to(prefix)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} calls to {prefix} after {timeout} s")
            time.sleep(0.01)
        return found


class Request(BaseHTTPRequestHandler):
    """One connection's requests, with the helpers route handlers answer with."""

    owner: FakeKubeAPI
    protocol_version = "HTTP/1.1"  # keep-alive and chunked responses, as the real server
    body: bytes = b""

    @property
    def api(self) -> FakeKubeAPI:
        return self.owner

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
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        api = self.owner
        if self.headers.get("Authorization"):
            api.authorizations.add(self.headers["Authorization"])
        self.body = self._read_body()
        content_type = self.headers.get("Content-Type")
        api.calls.append(Call(self.command, parts.path, query, _parsed(self.body), content_type))
        for prefix, handler in list(api.routes):
            if parts.path.startswith(prefix):
                handler(self, parts.path, query)
                return
        if self.command == "GET" and parts.path == "/version" and api.version is not None:
            self.send_json(200, version_info(api.version))
            return
        if self.command == "GET" and parts.path.startswith(namespaces.PREFIX):
            namespaces.serve(self, parts.path, query)
            return
        self.send_json(404, {"kind": "Status", "reason": "NotFound", "code": 404})

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # -- answering ---------------------------------------------------------------

    def send_json(self, code: int, body: Any) -> None:
        """``body`` as JSON with a Content-Length."""
        self.send_raw(code, json.dumps(body).encode(), (("Content-Type", "application/json"),))

    def send_raw(self, code: int, data: bytes, headers: tuple[tuple[str, str], ...]) -> None:
        """``data`` as it is, with ``headers`` and a Content-Length."""
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_chunked(self, code: int, content_type: str = "application/json") -> None:
        """Headers of a chunked answer; the body follows with :meth:`chunk`."""
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        """One chunk of a chunked answer, flushed."""
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def chunk_json(self, payload: Any) -> None:
        """One watch event: a JSON line in a chunk of its own."""
        self.chunk(json.dumps(payload).encode() + b"\n")

    def end_chunks(self) -> None:
        """The last chunk of a chunked answer."""
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def trickle(self, *, interval: float = 0.05) -> None:
        """Promise a body and send it a byte at a time, for as long as the client listens."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        deadline = time.monotonic() + MAX_HOLD_SECONDS
        with contextlib.suppress(OSError):
            self.wfile.write(b"{")
            self.wfile.flush()
            while time.monotonic() < deadline and not self.owner.released.is_set():
                self.wfile.write(b" ")
                self.wfile.flush()
                self.owner.released.wait(interval)
        # The promised body never came: the connection cannot carry another answer.
        self.close_connection = True


def _parsed(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body
