"""Read deadlines on uvicorn's h11 protocol: a request's headers, then its body, in time.

kube-apiserver waits for us at most ``timeoutSeconds``; a client that sends
slowly must not hold a connection, or memory, for longer. uvicorn has no
read timeouts of its own (only keep-alive), so :class:`DeadlineH11Protocol`
adds two deadlines to uvicorn's h11 protocol: a request's headers must
arrive within ``read_timeout`` of the connection being ready (or of the
request's first byte on a kept-alive connection), and its body within
``read_timeout`` of its headers. A deadline that passes closes the
connection; the app then sees a disconnect (outcome ``aborted``). How many
body bytes may be held at once is the app's budget
(``webhook.service.limits.Limits``).

Kept apart from the server process (``webhook.service.server``) because it
is protocol code built on another project's internals.

Refusals. The protocol also parses with
``webhook.service.http_hygiene.StrictConnection`` (a request with both
``Content-Length`` and ``Transfer-Encoding``, or a head over 16 KiB, is
refused) and answers every request the parser refuses with the status it
chose (400 or 431) and ``Connection: close``; bytes arriving after that are
never parsed.

Pins. pyproject.toml holds uvicorn to ``>=0.54,<0.55`` and h11 to
``>=0.16,<0.17`` because this module subclasses ``H11Protocol``, which is
not a public API: it relies on uvicorn calling ``connection_made``,
``data_received`` (handling each chunk before it returns),
``on_response_complete``, ``connection_lost`` and ``send_400_response``
(for every ``h11.RemoteProtocolError``); on the attributes ``conn`` (set in
``__init__`` and used for every later event, so replacing it replaces the
parser), ``cycle`` (``response_started``, ``default_headers``),
``transport``, ``loop``, ``client`` and ``timeout_keep_alive_task``; and on
uvicorn instantiating the class passed as its ``http`` option. Of h11 it
reads the client's state (``their_state``: ``IDLE``, ``SEND_BODY``, the
rest) and ``trailing_data`` (a pipelined request waiting), and subclasses
``Connection`` (public). The other uses of uvicorn's internals
share the pin: ``webhook.service.server.DrainingServer`` (``on_tick``,
``handle_exit``, ``server_state``'s ``default_headers`` and
``connections``) and ``webhook.service.tls`` (``ssl_context_factory``, new
in 0.54). Upgrading either package is a deliberate step: read the new
``h11_impl.py`` and ``server.py`` against the list above, then re-run
tests/process/test_service_limits.py (the deadlines, trickled heads and
bodies, idle keep-alive), tests/process/test_http_hygiene.py (the refusals),
tests/process/test_service_drain.py and tests/process/test_service_lifecycle.py
(draining and shutdown), tests/unit/test_tls.py (the TLS context) and
``make bench`` (the hot path's cost).
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Callable
from typing import Any, ClassVar, Final

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol

from webhook.service.http_hygiene import StrictConnection

log = logging.getLogger("webhook.server")

# Headers, then the body, each within this long: the apiserver's longest
# webhook timeout is 30 s and its default 10 s; it sends a review in one go,
# so 10 s is generous for it and short for a client that trickles bytes.
READ_TIMEOUT_SECONDS: Final = 10.0

# Added to a response's headers, h11 closes the connection after it (see
# :meth:`DeadlineH11Protocol.close_after_response` and the server's drain).
CONNECTION_CLOSE: Final = (b"connection", b"close")


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for a request's headers and one for its body.

    A subclass given to uvicorn as its ``http`` class, rather than an ASGI
    middleware, because headers are read before the app runs: only the
    protocol sees a client stall half-way through them. It watches h11's
    public state of the client (``their_state``) after uvicorn handles each
    chunk: ``IDLE`` while a request head is incomplete, ``SEND_BODY`` while
    its body is, anything else once the request is in. One timer per
    connection is re-armed at each change of phase. Idle time between
    requests stays uvicorn's keep-alive timeout.

    :func:`deadline_protocol` makes a subclass with the timeout and a
    callback for counting, since uvicorn instantiates the class itself.
    """

    read_timeout: ClassVar[float] = READ_TIMEOUT_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # h11 with the framing and head-size refusals of http_hygiene.
        self._strict = StrictConnection()
        self.conn = self._strict
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None

    def on_timeout(self, phase: str) -> None:
        """Called with ``"headers"`` or ``"body"`` when a deadline passes (for counting)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Ready (after the TLS handshake): the first request's head is due."""
        super().connection_made(transport)
        self._arm("headers")

    def data_received(self, data: bytes) -> None:
        """Start the head's clock at the first byte of a kept-alive request, then follow h11."""
        if self.transport.is_closing():
            # Refused (or answered with Connection: close) and closing: what
            # the client sends now, a request smuggled after a refused one
            # included, is never read.
            return
        if self._phase is None and self.conn.their_state is h11.IDLE:
            self._arm("headers")
        super().data_received(data)
        self._follow(idle_means_waiting=True)

    def on_response_complete(self) -> None:
        """A response went out; a pipelined request may follow, else the connection is idle."""
        super().on_response_complete()
        self._follow(idle_means_waiting=bool(self.conn.trailing_data[0]))

    def connection_lost(self, exc: Exception | None) -> None:
        """No deadline, and no keep-alive timer, outlives its connection."""
        self._disarm()
        super().connection_lost(exc)
        # uvicorn cancels its keep-alive timer only for a connection that ended
        # without an error. A client that resets the connection after a
        # response would otherwise stay referenced by the timer, with its TLS
        # state and buffers, for the whole keep-alive time (120 s).
        keep_alive = self.timeout_keep_alive_task
        if keep_alive is not None:
            keep_alive.cancel()
            self.timeout_keep_alive_task = None

    def send_400_response(self, msg: str) -> None:  # noqa: ARG002 - uvicorn's generic text
        """Answer a request the parser refused, with the status and reason it chose, and close.

        uvicorn calls this for every ``h11.RemoteProtocolError`` (with a
        generic ``msg``); its own version always says 400, in plain text.
        """
        status, reason = self._strict.refusal_status, self._strict.refusal_message
        log.info(
            "refusing a request: %s",
            reason,
            extra={"fields": {"client": self._client_text(), "status": status}},
        )
        body = orjson.dumps({"error": reason})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            CONNECTION_CLOSE,
        ]
        for event in (
            h11.Response(
                status_code=status, headers=headers, reason=http.HTTPStatus(status).phrase
            ),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

    def _client_text(self) -> str | None:
        return f"{self.client[0]}:{self.client[1]}" if self.client else None

    def close_after_response(self) -> None:
        """Answer the request being read (if its response has not started) with
        ``Connection: close``; later requests get it from the server's default headers."""
        cycle = self.cycle
        if (
            cycle is not None
            and not cycle.response_started
            and CONNECTION_CLOSE not in cycle.default_headers
        ):
            cycle.default_headers = [*cycle.default_headers, CONNECTION_CLOSE]

    def _follow(self, *, idle_means_waiting: bool) -> None:
        state = self.conn.their_state
        if state is h11.IDLE:
            if not idle_means_waiting:
                self._disarm()
            elif self._phase is None:
                self._arm("headers")
        elif state is h11.SEND_BODY:
            if self._phase != "body":
                self._arm("body")
        else:  # DONE, MUST_CLOSE, CLOSED, ERROR: nothing more to read for this request
            self._disarm()

    def _arm(self, phase: str) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(self.read_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._phase = None

    def _expired(self) -> None:
        phase = self._phase or "headers"
        self._deadline = self._phase = None
        if self.transport.is_closing():
            # Already answered (413, 503) and closing, but the client is still
            # sending: a TLS close would wait for it (up to 30 s). Not a
            # timeout of a request we wanted, so not counted.
            self.transport.abort()
            return
        self.on_timeout(phase)
        log.info(
            "closing a connection: request %s not received within %g s",
            phase,
            self.read_timeout,
            extra={"fields": {"client": self._client_text()}},
        )
        # abort, not close: a TLS close waits up to 30 s for the peer's
        # close_notify, and this peer is the one that stopped talking. The
        # app's receive() then sees the disconnect at once.
        self.transport.abort()


def deadline_protocol(
    read_timeout: float, on_timeout: Callable[[str], None]
) -> type[DeadlineH11Protocol]:
    """A :class:`DeadlineH11Protocol` with this timeout and timeout callback."""

    class Protocol(DeadlineH11Protocol):
        def on_timeout(self, phase: str) -> None:
            on_timeout(phase)

    Protocol.read_timeout = read_timeout
    return Protocol
