"""Connections per client: one address holding 1,200 connections does not delay another's reviews.

Against a real ``serve``: a flood from 127.0.0.2 (all of 127/8 is loopback)
keeps 1,200 connections idle or half-open (silent TCP, a TLS record cut
short, a finished handshake and nothing after it), reopening each as soon as
the server drops it, while reviews arrive from 127.0.0.1 on new TLS
connections, each with the client deadline kube-apiserver would give it
(5 s). Before the per-client cap, 5 of 9 such reviews timed out. The cap
itself (``webhook.service.connections``) is tested in-process, on a real
listening socket, in ``tests/unit/test_fair_connections.py``; here also the
flag's documentation, read from ``serve --help``.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import selectors
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.server import CLI, Server, running_server
from harness.tls_client import SERVICE_HOSTNAME, client_context, connect
from tests.builders import DEMO_NAMESPACES, REPO, pod, review_bytes
from webhook.service.connections import MAX_CONNECTIONS_PER_CLIENT

EVENTUALLY = 60.0
# kube-apiserver's deadline for one review in our install (timeoutSeconds: 5).
CLIENT_DEADLINE = 5.0
FLOOD = 1200
FLOODER = "127.0.0.2"

REVIEW = review_bytes(
    pod(None, image="nginx", generateName="web-"), namespace="demo", uid="from-another-client"
)
# The first bytes of a TLS ClientHello record promising more than follows.
CUT_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32


class Flood:
    """``count`` connections from ``source``, idle or half-open, each reopened when dropped.

    One thread drives them all with a selector: a third stay silent after
    connecting, a third send a TLS record cut short, a third finish a TLS
    handshake (verified, as any client) and then say nothing. ``reopened``
    counts how often the server dropped one (refused at accept, or cut off at
    a deadline).
    """

    def __init__(self, port: int, ca_file: Path, *, count: int, source: str) -> None:
        self.port = port
        self.count = count
        self.source = source
        self.context = client_context(ca_file)
        self.reopened = 0
        self.handshakes = 0
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(EVENTUALLY)

    def _open(self, index: int) -> None:
        while not self._stop.is_set():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.bind((self.source, 0))
            if sock.connect_ex(("127.0.0.1", self.port)) in (0, errno.EINPROGRESS):
                state = {"index": index, "kind": index % 3, "stage": "connecting"}
                self._selector.register(sock, selectors.EVENT_WRITE, state)
                return
            sock.close()
            self.reopened += 1

    def _drop(self, sock: socket.socket | ssl.SSLObject, state: dict[str, object]) -> None:
        raw = state.get("raw", sock)
        assert isinstance(raw, socket.socket)
        self._selector.unregister(raw)
        raw.close()
        self.reopened += 1
        self._open(int(state["index"]))  # type: ignore[call-overload]

    def _run(self) -> None:
        for index in range(self.count):
            self._open(index)
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.1):
                sock = key.fileobj
                state = key.data
                assert isinstance(sock, socket.socket)
                try:
                    self._step(sock, state)
                except (OSError, ssl.SSLError):
                    self._drop(sock, state)
        for key in list(self._selector.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def _step(self, sock: socket.socket, state: dict[str, object]) -> None:
        stage = state["stage"]
        if stage == "connecting":
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, "connect failed")
            if state["kind"] == 1:
                sock.send(CUT_CLIENT_HELLO)
            if state["kind"] == 2:
                tls = self.context.wrap_socket(
                    sock, server_hostname=SERVICE_HOSTNAME, do_handshake_on_connect=False
                )
                self._selector.unregister(sock)
                state["stage"], state["raw"] = "handshaking", tls
                self._selector.register(tls, selectors.EVENT_READ | selectors.EVENT_WRITE, state)
                return
            state["stage"] = "idle"
            self._selector.modify(sock, selectors.EVENT_READ, state)
        elif stage == "handshaking":
            assert isinstance(sock, ssl.SSLSocket)
            try:
                sock.do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            self.handshakes += 1
            state["stage"] = "idle"
            self._selector.modify(sock, selectors.EVENT_READ, state)
        elif not sock.recv(4096):  # idle: anything readable is the server ending it
            raise ConnectionResetError("closed by the server")


def review_on_a_new_connection(server: Server) -> int:
    """One review over a new TLS connection within the client's deadline; its HTTP status."""
    deadline = time.monotonic() + CLIENT_DEADLINE
    with connect(server.port, server.ca_file, timeout=CLIENT_DEADLINE) as sock:
        sock.sendall(
            (
                f"POST /mutate HTTP/1.1\r\nHost: {SERVICE_HOSTNAME}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(REVIEW)}\r\n\r\n"
            ).encode()
            + REVIEW
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            sock.settimeout(max(0.01, deadline - time.monotonic()))
    assert b'"allowed":true' in received, received
    return int(received.split(b" ", 2)[1])


@contextlib.contextmanager
def descriptors(wanted: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("fair-conns"), namespaces_yaml=DEMO_NAMESPACES
    ) as s:
        yield s


def test_1200_idle_or_half_open_connections_from_one_address_do_not_delay_another_clients_reviews(
    server: Server,
) -> None:
    refused = "sidecar_injector_connections_refused_total"
    busiest = "sidecar_injector_connections_busiest_client"
    with descriptors(FLOOD + 500), Flood(server.port, server.ca_file, count=FLOOD, source=FLOODER):
        # The flood is in place: its address holds all it may, and what it
        # opens beyond that has been refused many times over.
        server.wait_for_metric(busiest, lambda held: held == MAX_CONNECTIONS_PER_CLIENT)
        server.wait_for_metric(refused, lambda count: count >= 2 * FLOOD)
        statuses = [review_on_a_new_connection(server) for _ in range(20)]
        assert statuses == [200] * 20
        metrics = server.metrics()
    assert metrics[busiest] <= MAX_CONNECTIONS_PER_CLIENT
    assert metrics["sidecar_injector_connections_open"] <= MAX_CONNECTIONS_PER_CLIENT + 5
    server.wait_for_log(f"refusing connections from {FLOODER}")
    # Once the flood has gone, its address gets connections again.
    server.wait_for_metric(busiest, lambda held: held <= 1)
    raw = socket.create_connection(
        ("127.0.0.1", server.port), timeout=EVENTUALLY, source_address=(FLOODER, 0)
    )
    with client_context(server.ca_file).wrap_socket(raw, server_hostname=SERVICE_HOSTNAME) as tls:
        assert tls.version() is not None


def test_the_per_client_cap_is_documented_with_its_default() -> None:
    result = subprocess.run(
        [CLI, "serve", "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    help_text = " ".join(result.stdout.split())
    assert "--max-connections-per-client N" in help_text
    assert f"(default {MAX_CONNECTIONS_PER_CLIENT})" in help_text
    usage = f"[--max-connections-per-client {MAX_CONNECTIONS_PER_CLIENT}]"
    for doc in ("README.md", "docs/service.md"):
        assert usage in (REPO / doc).read_text(), doc
