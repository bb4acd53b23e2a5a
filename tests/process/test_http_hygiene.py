"""HTTP hygiene against a real ``serve``: framing it refuses, heads it measures, no redirects.

Each case is sent over a raw verified TLS connection, so the bytes are
exactly what a hostile client would send (httpx would fix the framing), and
the test reads everything the server writes until it closes: a request
smuggled after a refused one must get no answer at all. The parser's
measure of each head alone is ``tests/unit/test_http_hygiene.py``.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import h11
import pytest

from harness.server import Server, WebhookClient, running_server
from harness.tls_client import SERVICE_HOSTNAME, connect
from tests.builders import DEMO_NAMESPACES, pod, review_bytes
from webhook.service.http_hygiene import MAX_HEAD_BYTES

EVENTUALLY = 60.0

REVIEW = review_bytes(pod(None, image="nginx", generateName="web-"), namespace="demo")

SMUGGLED = f"GET /metrics HTTP/1.1\r\nHost: {SERVICE_HOSTNAME}\r\n\r\n".encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("hygiene"), namespaces_yaml=DEMO_NAMESPACES
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> WebhookClient:
    return server.client()


def everything_until_closed(sock: ssl.SSLSocket) -> bytes:
    """All the server sends until it closes the connection (a test deadline if it never does)."""
    sock.settimeout(EVENTUALLY)
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(
                f"the server kept the connection open after {received!r}"
            ) from None
        except (OSError, ssl.SSLError):
            return received
        if not chunk:
            return received
        received += chunk


def responses(data: bytes) -> list[h11.Response]:
    """The HTTP responses in a byte stream, parsed by a client-side h11."""
    parser = h11.Connection(h11.CLIENT)
    found: list[h11.Response] = []
    parser.receive_data(data)
    parser.receive_data(b"")
    # A client parser wants a request first to know what it is reading answers to.
    parser.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    parser.send(h11.EndOfMessage())
    while True:
        event = parser.next_event()
        if isinstance(event, h11.Response):
            found.append(event)
        elif isinstance(event, h11.EndOfMessage):
            if parser.our_state is not h11.DONE or parser.their_state is not h11.DONE:
                break
            parser.start_next_cycle()
            parser.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            parser.send(h11.EndOfMessage())
        elif event in (h11.NEED_DATA, h11.PAUSED) or isinstance(event, h11.ConnectionClosed):
            break
    return found


def status_line(data: bytes) -> bytes:
    return data.split(b"\r\n", 1)[0]


def send_raw(server: Server, data: bytes) -> bytes:
    with connect(server.port, server.ca_file, timeout=EVENTUALLY) as sock:
        sock.sendall(data)
        return everything_until_closed(sock)


# --- Content-Length and Transfer-Encoding together -------------------------------------------


@pytest.mark.parametrize(
    "framing",
    [
        # Chunked body that ends at once; a Content-Length reader would see
        # the chunk and the smuggled request as the body instead.
        b"Content-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        # The review as a chunk, then the end: a well-formed chunked request otherwise.
        b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"
        + f"{len(REVIEW):x}\r\n".encode()
        + REVIEW
        + b"\r\n0\r\n\r\n",
    ],
    ids=["length-first", "encoding-first", "whole-review-chunked"],
)
def test_both_framings_get_400_the_connection_closes_and_a_smuggled_request_is_not_answered(
    server: Server, client: WebhookClient, framing: bytes
) -> None:
    head = (
        f"POST /mutate HTTP/1.1\r\nHost: {SERVICE_HOSTNAME}\r\nContent-Type: application/json\r\n"
    ).encode()
    data = send_raw(server, head + framing + SMUGGLED)
    answers = responses(data)
    assert [answer.status_code for answer in answers] == [400], data
    assert (b"connection", b"close") in answers[0].headers
    assert b"Content-Length and Transfer-Encoding" in data
    assert b"sidecar_injector" not in data  # /metrics never answered
    # The server goes on serving everyone else.
    assert client.post("/mutate", REVIEW).status_code == 200


def test_a_chunked_review_alone_is_still_answered(server: Server) -> None:
    head = (
        f"POST /mutate HTTP/1.1\r\nHost: {SERVICE_HOSTNAME}\r\nConnection: close\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    body = f"{len(REVIEW):x}\r\n".encode() + REVIEW + b"\r\n0\r\n\r\n"
    data = send_raw(server, head + body)
    assert [answer.status_code for answer in responses(data)] == [200]


# --- the size of a request head --------------------------------------------------------------


def padded_head(total: int) -> bytes:
    """A /mutate request head of exactly ``total`` bytes (request line to blank line)."""
    start = (
        f"POST /mutate HTTP/1.1\r\nHost: {SERVICE_HOSTNAME}\r\n"
        f"Content-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(REVIEW)}\r\nX-Padding: "
    ).encode()
    padding = total - len(start) - len(b"\r\n\r\n")
    head = start + b"a" * padding + b"\r\n\r\n"
    assert len(head) == total
    return head


def test_a_28_kib_head_sent_in_one_piece_gets_431_and_the_connection_closes(
    server: Server, client: WebhookClient
) -> None:
    data = send_raw(server, padded_head(28 * 1024) + REVIEW)
    assert status_line(data) == b"HTTP/1.1 431 Request Header Fields Too Large", data
    assert f"larger than {MAX_HEAD_BYTES} bytes".encode() in data
    assert client.post("/mutate", REVIEW).status_code == 200


def test_a_head_one_byte_over_16_kib_gets_431_and_one_at_16_kib_is_served(server: Server) -> None:
    over = send_raw(server, padded_head(MAX_HEAD_BYTES + 1) + REVIEW)
    assert status_line(over) == b"HTTP/1.1 431 Request Header Fields Too Large", over
    at = send_raw(server, padded_head(MAX_HEAD_BYTES) + REVIEW)
    assert status_line(at) == b"HTTP/1.1 200 OK", at


def test_a_head_that_never_ends_gets_431_once_past_16_kib(server: Server) -> None:
    with connect(server.port, server.ca_file, timeout=EVENTUALLY) as sock:
        sock.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nX-Padding: ")
        for _ in range(4):
            sock.sendall(b"a" * 5000)  # never a blank line
        data = everything_until_closed(sock)
    assert status_line(data) == b"HTTP/1.1 431 Request Header Fields Too Large", data


# --- no redirects ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/mutate/"),
        ("POST", "/preview/"),
        ("GET", "/healthz/"),
        ("GET", "/readyz/"),
        ("GET", "/metrics/"),
        ("GET", "/nothing-here"),
        ("POST", "//mutate"),
    ],
)
def test_unknown_paths_and_trailing_slashes_are_404_never_a_redirect_to_the_host_header(
    server: Server, method: str, path: str
) -> None:
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: attacker.example.com\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(REVIEW)}\r\n\r\n"
    ).encode()
    data = send_raw(server, request + REVIEW)
    (answer,) = responses(data)
    assert answer.status_code == 404, data
    assert b"attacker.example.com" not in data
    assert all(name != b"location" for name, _ in answer.headers)
