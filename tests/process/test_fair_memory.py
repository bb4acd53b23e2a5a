"""Memory flat under connection churn: 50,000 connections come and go, RSS ends where it began.

Against a real ``serve``, its memory read from its own ``/proc/PID/status``:
after a warm-up, 50,000 connections, most of them plain TCP connects that
leave at once (a failed TLS handshake on the server's side), one in twenty
a full TLS handshake, one in a hundred a request answered and then a reset
(the client vanishing after a response, as a crashed peer does). Before the fix
RSS grew by tens of MB and stayed there: failed handshakes left reference
cycles for the rare full collections, reset connections were held by their
keep-alive timer for 120 s, and what was freed stayed in the C heap
(``webhook.service.heap``). The server is started with a per-client cap
above what the test ever holds open, so every connection is served rather
than refused at accept: what is measured is what a served connection leaves.

A second test holds a crowd of idle TLS connections, lets them go, and
checks the memory they took is given back. When the server collects and
trims (``HeapTrimmer``) is tested in-process, on a fake clock, in
``tests/unit/test_fair_memory.py``.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import ssl
import struct
import time
from collections.abc import Iterator

import pytest

from harness.server import Server, running_server
from harness.tls_client import SERVICE_HOSTNAME, client_context

EVENTUALLY = 120.0
# Longer than the quiet spell after which the server trims for a few closed
# connections (heap.QUIET_TRIM_SECONDS), with room for a loaded machine.
SETTLE = 60.0
CONNECTIONS = 50_000
WARM_UP = 2_000
CROWD = 800
# How far above its starting point RSS may end. Without the fix it ended
# tens of MB higher (docs/service.md, "Limits").
MARGIN_MIB = 8.0
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("fair-memory"),
        # A crowd of idle connections takes a while to open on a loaded
        # machine; the first must not reach the header deadline meanwhile.
        args=["--max-connections-per-client", "1024", "--read-timeout", "300"],
    ) as running:
        yield running


def churn(server: Server, count: int) -> None:
    """``count`` connections opened and closed one after another, in the mix above."""
    address = ("127.0.0.1", server.port)
    context = client_context(server.ca_file)
    request = f"GET /healthz HTTP/1.1\r\nHost: {SERVICE_HOSTNAME}\r\n\r\n".encode()
    for index in range(count):
        raw = socket.create_connection(address, timeout=EVENTUALLY)
        if index % 20:
            raw.close()
            continue
        with context.wrap_socket(raw, server_hostname=SERVICE_HOSTNAME) as tls:
            if index % 100 == 0:
                tls.sendall(request)
                assert tls.recv(65536).startswith(b"HTTP/1.1 200")
                # Vanish after the response: a reset, no close_notify.
                tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)


def settled_rss(server: Server) -> float:
    """RSS once the server has collected and trimmed after the last connections closed.

    (A server that never trims is measured when the wait for it is over.)
    """
    trims = "sidecar_injector_heap_trims_total"
    before = server.metrics().get(trims, 0.0)
    with contextlib.suppress(AssertionError):
        server.wait_for_metric(trims, lambda count: count > before, timeout=SETTLE)
    return server.memory().rss_mib


def rss_back_within(server: Server, limit_mib: float) -> float:
    """Poll RSS until it is at most ``limit_mib``; the last value (failing past the deadline)."""
    deadline = time.monotonic() + EVENTUALLY
    while True:
        rss = server.memory().rss_mib
        if rss <= limit_mib or time.monotonic() > deadline:
            return rss
        time.sleep(0.2)


def test_50000_connections_opened_and_closed_leave_rss_where_it_started(server: Server) -> None:
    churn(server, WARM_UP)
    start = settled_rss(server)
    churn(server, CONNECTIONS)
    end = rss_back_within(server, start + MARGIN_MIB)
    assert end <= start + MARGIN_MIB, f"RSS {start:.1f} MiB before, {end:.1f} MiB after"


@contextlib.contextmanager
def idle_tls_connections(server: Server, count: int) -> Iterator[list[ssl.SSLSocket]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 500)), hard))
    context = client_context(server.ca_file)
    held: list[ssl.SSLSocket] = []
    try:
        for _ in range(count):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=EVENTUALLY)
            held.append(context.wrap_socket(raw, server_hostname=SERVICE_HOSTNAME))
        yield held
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_memory_a_crowd_of_idle_connections_took_is_given_back_when_they_go(
    server: Server,
) -> None:
    churn(server, 100)
    start = settled_rss(server)
    with idle_tls_connections(server, CROWD):
        server.wait_for_metric(
            "sidecar_injector_connections_open", lambda n: n >= CROWD, timeout=EVENTUALLY
        )
        crowded = server.memory().rss_mib
    assert crowded > start + MARGIN_MIB  # they did cost memory while they were there
    end = rss_back_within(server, start + MARGIN_MIB)
    assert end <= start + MARGIN_MIB, (
        f"RSS {start:.1f} MiB, {crowded:.1f} with them, {end:.1f} after"
    )
