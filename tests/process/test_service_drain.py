"""SIGTERM drains kept-alive connections before the server stops (``webhook.service.server``).

kube-apiserver keeps connections to a replica after it leaves the Service's
endpoints, and its Go client does not retry a POST that raced the server
closing an idle connection. So after SIGTERM ``serve`` goes on answering,
each response with ``Connection: close``, until no connection is left (or the
drain time is over), and only then shuts down. These tests hold real
kept-alive TLS connections to a real ``serve`` process, as the apiserver
does, and watch what each of them gets. No test waits a fixed time: each one
waits for a log line, a closed socket or the process's exit, with generous
deadlines; the drain times given to ``serve`` are long so that only the
behaviour under test can end the drain within them.
"""

from __future__ import annotations

import signal
import ssl
from pathlib import Path

import orjson

from harness.server import Server, running_server
from harness.tls_client import SERVICE_HOSTNAME, connect
from tests.builders import DEMO_NAMESPACES, review_bytes

# Far longer than any wait below: a drain that ends within a test's deadline
# ended for the reason the test is about, not because its time ran out.
LONG_DRAIN = "600"
EXIT_DEADLINE = 60.0
# uvicorn's shutdown closes an idle kept-alive connection and then waits, up
# to the graceful shutdown time (15 s by default), for the client's half of
# the TLS close, which the tests below only read after the process has
# exited: a short time lets them end in seconds. Nothing else is in flight.
SHORT_GRACE = ["--graceful-shutdown-seconds", "1"]


def _read_response(sock: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length framed): status, headers (lower case), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of a response body"
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]


def _admit(sock: ssl.SSLSocket, uid: str) -> tuple[int, dict[str, str], bytes]:
    """POST one review on ``sock`` (kept alive unless the server says otherwise)."""
    body = review_bytes(uid=uid)
    head = (
        f"POST /mutate HTTP/1.1\r\nHost: {SERVICE_HOSTNAME}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return _read_response(sock)


def _closed_by_server(sock: ssl.SSLSocket) -> bool:
    """Block until the server closes ``sock`` (True), or sends something instead (False)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _kept_alive(server: Server, count: int) -> list[ssl.SSLSocket]:
    """``count`` connections, each having carried one admission and kept alive."""
    sockets = [connect(server.port, server.ca_file, timeout=EXIT_DEADLINE) for _ in range(count)]
    for index, sock in enumerate(sockets):
        status, headers, _ = _admit(sock, f"before-{index}")
        assert status == 200
        assert headers.get("connection") != "close", headers
    return sockets


def test_after_sigterm_each_connection_gets_connection_close_and_the_process_exits_zero(
    tmp_path: Path,
) -> None:
    args = ["--drain-seconds", LONG_DRAIN]
    with running_server(tmp_path, namespaces_yaml=DEMO_NAMESPACES, args=args) as server:
        held = _kept_alive(server, 3)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_log("draining: answering with Connection: close")
        # A connection made during the drain (a Service route not yet
        # updated) is served too, not refused.
        late = connect(server.port, server.ca_file, timeout=EXIT_DEADLINE)
        for index, sock in enumerate([*held, late]):
            status, headers, body = _admit(sock, f"drain-{index}")
            assert status == 200
            assert headers["connection"] == "close", headers
            response = orjson.loads(body)["response"]
            assert response["uid"] == f"drain-{index}"
            assert response["allowed"] is True
            assert response["patchType"] == "JSONPatch"
            assert _closed_by_server(sock)
            sock.close()
        # The last connection gone, the drain is over long before its time.
        assert server.proc.wait(timeout=EXIT_DEADLINE) == 0
        server.wait_for_log("drained: no connection left open")


def test_a_request_half_read_when_sigterm_arrives_is_answered_with_connection_close(
    tmp_path: Path,
) -> None:
    args = ["--drain-seconds", LONG_DRAIN]
    with running_server(tmp_path, namespaces_yaml=DEMO_NAMESPACES, args=args) as server:
        sock = connect(server.port, server.ca_file, timeout=EXIT_DEADLINE)
        body = review_bytes(uid="in-flight")
        head = (
            f"POST /mutate HTTP/1.1\r\nHost: {SERVICE_HOSTNAME}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[: len(body) // 2])
        # Being read by the app: the half it was sent is held.
        server.wait_for_metric(
            "sidecar_injector_request_body_bytes_held", lambda n: n == len(body) // 2
        )
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_log("draining: answering with Connection: close")
        sock.sendall(body[len(body) // 2 :])
        status, headers, answer = _read_response(sock)
        assert status == 200
        assert headers["connection"] == "close", headers
        assert orjson.loads(answer)["response"]["uid"] == "in-flight"
        assert _closed_by_server(sock)
        sock.close()
        assert server.proc.wait(timeout=EXIT_DEADLINE) == 0


def test_a_connection_idle_through_the_whole_drain_is_closed_at_its_end(tmp_path: Path) -> None:
    with running_server(
        tmp_path, namespaces_yaml=DEMO_NAMESPACES, args=["--drain-seconds", "1"]
    ) as server:
        (idle,) = _kept_alive(server, 1)
        server.proc.send_signal(signal.SIGTERM)
        assert _closed_by_server(idle)
        idle.close()
        assert server.proc.wait(timeout=EXIT_DEADLINE) == 0
        server.wait_for_log("drain time over with 1 connections still open")


def test_a_second_sigterm_ends_the_drain_at_once(tmp_path: Path) -> None:
    args = ["--drain-seconds", LONG_DRAIN, *SHORT_GRACE]
    with running_server(tmp_path, namespaces_yaml=DEMO_NAMESPACES, args=args) as server:
        (idle,) = _kept_alive(server, 1)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_log("draining: answering with Connection: close")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=EXIT_DEADLINE) == 0
        assert _closed_by_server(idle)
        idle.close()


def test_no_drain_when_turned_off(tmp_path: Path) -> None:
    with running_server(
        tmp_path, namespaces_yaml=DEMO_NAMESPACES, args=["--drain-seconds", "0", *SHORT_GRACE]
    ) as server:
        (idle,) = _kept_alive(server, 1)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=EXIT_DEADLINE) == 0
        assert _closed_by_server(idle)
        idle.close()
        assert "draining" not in server.log()
