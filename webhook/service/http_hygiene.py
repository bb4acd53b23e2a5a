"""HTTP/1.1 framing the server refuses although h11 lets it through.

h11 parses requests the way RFC 9112 allows a lenient server to, and two of
its allowances are levers for a client:

- **Both ``Content-Length`` and ``Transfer-Encoding``.** h11 frames the body by
  ``Transfer-Encoding`` and keeps the connection open. A proxy (or any peer)
  that framed it by ``Content-Length`` instead disagrees with us about where
  the request ends, and what one side takes for body bytes the other takes
  for the next request: request smuggling. RFC 9112 (6.3) lets a server
  refuse such a message and says it must close the connection after
  answering; :class:`StrictConnection` refuses it with 400 and the server
  closes, so nothing sent after it on that connection is ever read.
- **A request head over the limit, when it arrives in one piece.** h11 bounds
  only what it buffers of an *incomplete* head (``max_incomplete_event_size``,
  431), so a complete 28 KiB head in one read went through. Every head is
  measured here, complete or not, against the same :data:`MAX_HEAD_BYTES`.

Only the public ``h11.Connection`` API is used; the protocol
(``webhook.service.h11_deadlines``) swaps this class in for uvicorn's and
answers the refusal with the status chosen here.
"""

from __future__ import annotations

from typing import Final

import h11

# The request line plus every header line and the blank line that ends them:
# what the docs promise (16 KiB). kube-apiserver's review requests carry a few
# hundred bytes of headers.
MAX_HEAD_BYTES: Final = 16 * 1024


class StrictConnection(h11.Connection):
    """h11's server side, refusing both framings at once and heads over :data:`MAX_HEAD_BYTES`.

    A refusal is an ``h11.RemoteProtocolError`` from :meth:`next_event`, as h11
    raises for what it refuses itself; :attr:`refusal_status` says which
    status answers it (h11's own hint for its errors: 400, or 431 for an
    incomplete head over the limit) and :attr:`refusal_message` why, in one
    line for the client.
    """

    def __init__(self) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        # Bytes fed so far, and where the current request's head began among
        # them: a head's size is where the parser stopped minus where it began.
        self._fed = 0
        self._head_start = 0
        self.refusal_status = 400
        self.refusal_message = "invalid HTTP request"

    def receive_data(self, data: bytes) -> None:
        """Feed bytes (``b""``: the peer closed), counting them for the head's size."""
        self._fed += len(data)
        super().receive_data(data)

    def start_next_cycle(self) -> None:
        """The next request's head starts with whatever is still buffered."""
        super().start_next_cycle()
        self._head_start = self._fed - len(self.trailing_data[0])

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        """h11's next event, or ``RemoteProtocolError`` for a request it should not accept."""
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as err:
            self._refuse(err)
            raise
        if isinstance(event, h11.Request):
            self._check(event)
        return event

    def _check(self, request: h11.Request) -> None:
        head_bytes = self._fed - len(self.trailing_data[0]) - self._head_start
        if head_bytes > MAX_HEAD_BYTES:
            raise self._refuse(
                h11.RemoteProtocolError(
                    f"request head is larger than {MAX_HEAD_BYTES} bytes", error_status_hint=431
                )
            )
        names = {name for name, _ in request.headers}
        if b"content-length" in names and b"transfer-encoding" in names:
            raise self._refuse(
                h11.RemoteProtocolError(
                    "request has both Content-Length and Transfer-Encoding", error_status_hint=400
                )
            )

    def _refuse(self, err: h11.RemoteProtocolError) -> h11.RemoteProtocolError:
        self.refusal_status = err.error_status_hint
        # h11's messages are short and its own; a head over the limit is
        # named the way the docs name it.
        message = str(err) or "invalid HTTP request"
        if message == "Receive buffer too long":
            message = f"request head is larger than {MAX_HEAD_BYTES} bytes"
        self.refusal_message = message
        return err
