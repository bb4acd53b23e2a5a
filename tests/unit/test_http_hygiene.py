"""HTTP hygiene in-process: the parser measures each request head from its own start.

``webhook.service.http_hygiene.StrictConnection`` is the h11 connection
``serve`` parses requests with; the refusals as a client sees them from a
real ``serve`` are ``tests/process/test_http_hygiene.py``.
"""

from __future__ import annotations

import h11
import pytest

from webhook.service.http_hygiene import MAX_HEAD_BYTES, StrictConnection


def get_head(size: int) -> bytes:
    """A GET head of ``size`` bytes."""
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


def answer_one(conn: StrictConnection) -> None:
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    conn.start_next_cycle()


def test_each_head_on_a_kept_alive_connection_is_measured_from_its_own_start() -> None:
    """The parser in-process: two pipelined 9 KiB heads in one read pass, 17 KiB does not."""
    conn = StrictConnection()
    conn.receive_data(get_head(9 * 1024) + get_head(9 * 1024))
    answer_one(conn)
    answer_one(conn)
    conn.receive_data(get_head(MAX_HEAD_BYTES + 1))
    with pytest.raises(h11.RemoteProtocolError, match="larger than"):
        conn.next_event()
    assert conn.refusal_status == 431
