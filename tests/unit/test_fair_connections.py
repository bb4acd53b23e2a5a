"""Connections per client, in-process: the cap at accept on a real listening socket, and its flag.

``GatedListener`` (``webhook.service.connections``) resets a client's
connection inside ``accept()`` once that address holds its share, so the
server never spends a handshake on it; a real ``serve`` under a flood from
one address is ``tests/process/test_fair_connections.py``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from webhook.service.connections import (
    MAX_CONNECTIONS_PER_CLIENT,
    REFUSALS_PER_ACCEPT,
    ClientConnections,
    GatedListener,
)
from webhook.service.server import MAX_OPEN_FILES, ServeError, ServeSettings

EVENTUALLY = 60.0


@pytest.fixture
def listener() -> Iterator[GatedListener]:
    refusals: list[None] = []
    gate = ClientConnections(2, on_refused=lambda: refusals.append(None))
    sock = GatedListener(gate, socket.AF_INET)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.settimeout(EVENTUALLY)
    yield sock
    sock.close()


def dial(listener: GatedListener, source: str) -> socket.socket:
    return socket.create_connection(
        listener.getsockname(), timeout=EVENTUALLY, source_address=(source, 0)
    )


def was_reset(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_client_at_its_cap_is_reset_at_accept_and_others_still_get_in(
    listener: GatedListener,
) -> None:
    gate = listener.gate
    first, second, third = (dial(listener, "127.0.0.2") for _ in range(3))
    other = dial(listener, "127.0.0.3")
    accepted_first, _ = listener.accept()
    accepted_second, _ = listener.accept()
    # The third from .2 is reset inside accept(); the next one returned is .3's.
    accepted_other, address = listener.accept()
    assert address[0] == "127.0.0.3"
    assert was_reset(third)
    assert gate.open_from("127.0.0.2") == 2
    assert gate.busiest() == 2
    assert gate.total == 3
    # Closing one gives its place back, once.
    accepted_first.close()
    accepted_first.close()
    assert gate.open_from("127.0.0.2") == 1
    again = dial(listener, "127.0.0.2")
    accepted_again, _ = listener.accept()
    assert gate.open_from("127.0.0.2") == 2
    for sock in (first, second, third, other, again, accepted_second, accepted_other):
        sock.close()
    assert gate.total == 1
    accepted_again.close()
    assert gate.total == 0
    assert gate.closed == 4


def test_a_connection_dropped_without_close_gives_its_place_back(
    listener: GatedListener,
) -> None:
    client = dial(listener, "127.0.0.2")
    accepted, _ = listener.accept()
    assert listener.gate.total == 1
    del accepted  # as asyncio would, were it to fail before making a transport
    assert listener.gate.total == 0
    client.close()


def test_a_stream_of_refusals_hands_the_loop_back_after_a_bounded_number(
    listener: GatedListener,
) -> None:
    kept = [dial(listener, "127.0.0.2") for _ in range(2)]
    accepted = [listener.accept()[0] for _ in range(2)]
    refused = [dial(listener, "127.0.0.2") for _ in range(REFUSALS_PER_ACCEPT + 5)]
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()  # REFUSALS_PER_ACCEPT of them, then "nothing more now"
    with pytest.raises(BlockingIOError):
        listener.accept()  # the rest, then really nothing
    assert all(was_reset(sock) for sock in refused)
    for sock in kept + accepted + refused:
        sock.close()


def test_the_per_client_cap_is_a_serve_flag_from_1_to_the_descriptor_limit() -> None:
    class Args:
        host, port, cert_dir, config = "127.0.0.1", 8443, Path("certs"), None
        namespaces_file = kubeconfig = read_timeout = None
        log_level = "info"
        max_connections_per_client: int | None = None

    default = ServeSettings.from_args(Args())  # type: ignore[arg-type]
    assert default.max_connections_per_client == MAX_CONNECTIONS_PER_CLIENT == 256
    for bad in (0, -1, MAX_OPEN_FILES + 1):
        Args.max_connections_per_client = bad
        with pytest.raises(ServeError, match="--max-connections-per-client"):
            ServeSettings.from_args(Args())  # type: ignore[arg-type]
    Args.max_connections_per_client = 1
    assert ServeSettings.from_args(Args()).max_connections_per_client == 1  # type: ignore[arg-type]
