"""Connections per client: a cap per source address, decided at accept, before any TLS.

Anyone who can reach the Service can open connections, and nothing
authenticates the API server, so the server's connections (about 1,000: the
descriptor limit, ``webhook.service.server.MAX_OPEN_FILES``) are shared per
source address. A client at its cap gets further connections closed as soon
as they are accepted (a TCP reset, no TLS, no protocol object), so 1,200
connections held or reopened by one address cannot starve the others, and
refusing costs a ``close``, not a handshake.

How: the server listens on a :class:`GatedListener`, a listening socket
whose ``accept()`` only returns connections :class:`ClientConnections`
admits; each returned connection is a :class:`CountedConnection` that gives
its place back when it is closed. asyncio's event loop accepts by calling
the listening socket's ``accept()`` and closes a transport by closing its
socket, so nothing in uvicorn or asyncio needs changing: everything else
(the handshake deadline, the read deadlines, keep-alive) applies to admitted
connections as before. Everything here runs on the event loop's thread.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Final

log = logging.getLogger("webhook.server")

# The default of ``serve --max-connections-per-client``. kube-apiserver calls
# webhooks through client-go's transport, which keeps up to 25 idle
# connections per host and opens more without limit whenever every pooled
# connection is busy; over HTTP/1.1 (all this server speaks) each review in
# flight holds one. So one API server holds about as many connections as it
# has reviews in flight: a few, and a few dozen in a burst of pod creations
# (docs/service.md, "Limits", has the figures). 256 leaves room for several
# API servers that reach the webhook from one address (behind SNAT or a
# konnectivity proxy) in a burst, while one client at its cap holds a
# quarter of the server's descriptors.
MAX_CONNECTIONS_PER_CLIENT: Final = 256

# Refusals per accept() call before the event loop gets its turn back: a
# client reconnecting as fast as it is refused must not keep the loop in one
# callback.
REFUSALS_PER_ACCEPT: Final = 64

# At most one warning per this many seconds about refused connections.
WARN_EVERY_SECONDS: Final = 60.0

# SO_LINGER on, timeout 0: close() sends a reset and frees the socket at once
# (no FIN handshake, no TIME_WAIT on our side for a client we are refusing).
_RESET_ON_CLOSE: Final = struct.pack("ii", 1, 0)


class ClientConnections:
    """Open connections per source address, at most ``per_client`` each.

    ``on_refused`` is called once per refused connection (for counting);
    ``clock`` times the throttled warning.
    """

    def __init__(
        self,
        per_client: int = MAX_CONNECTIONS_PER_CLIENT,
        *,
        on_refused: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_client < 1:
            raise ValueError("per_client must be at least 1")
        self.per_client = per_client
        self._on_refused = on_refused
        self._clock = clock
        self._open: dict[str, int] = {}
        self._total = 0
        self.closed = 0  # connections closed so far (for trimming the heap after churn)
        self._refused_unreported = 0
        self._warned_at = float("-inf")

    @property
    def total(self) -> int:
        """Connections open now, from every client."""
        return self._total

    def open_from(self, host: str) -> int:
        """Connections open now from ``host``."""
        return self._open.get(host, 0)

    def busiest(self) -> int:
        """The most connections any one client holds now (0 with none open)."""
        return max(self._open.values(), default=0)

    def admit(self, host: str) -> bool:
        """Take a place for one more connection from ``host``; False (counted) at its cap."""
        held = self._open.get(host, 0)
        if held >= self.per_client:
            self._refused(host)
            return False
        self._open[host] = held + 1
        self._total += 1
        return True

    def release(self, host: str) -> None:
        """Give back a place taken by :meth:`admit`."""
        held = self._open.get(host, 0)
        if held <= 1:
            self._open.pop(host, None)
        else:
            self._open[host] = held - 1
        self._total = max(0, self._total - 1)
        self.closed += 1

    def _refused(self, host: str) -> None:
        self._on_refused()
        self._refused_unreported += 1
        now = self._clock()
        if now - self._warned_at < WARN_EVERY_SECONDS:
            return
        log.warning(
            "refusing connections from %s: it has %d open, the most one client may hold"
            " (--max-connections-per-client); %d refused since the last warning",
            host,
            self.per_client,
            self._refused_unreported,
        )
        self._warned_at = now
        self._refused_unreported = 0


class CountedConnection(socket.socket):
    """An accepted connection that gives its place back to its :class:`ClientConnections`."""

    __slots__ = ("_gate", "_host")

    def hold(self, gate: ClientConnections, host: str) -> None:
        """Give the place back to ``gate`` (for ``host``) when this socket is closed."""
        self._gate: ClientConnections | None = gate
        self._host = host

    def close(self) -> None:
        """Close, and give the place back (once)."""
        self._give_back()
        super().close()

    def detach(self) -> int:
        """Hand the descriptor on: no longer ours to count."""
        self._give_back()
        return super().detach()

    def __del__(self) -> None:
        # A socket dropped without close() (an error before asyncio made a
        # transport of it) must not keep its place for ever.
        self.close()

    def _give_back(self) -> None:
        gate = getattr(self, "_gate", None)
        if gate is not None:
            self._gate = None
            gate.release(self._host)


class GatedListener(socket.socket):
    """A listening socket whose ``accept()`` returns only the connections ``gate`` admits.

    A connection from a client at its cap is reset as soon as it is accepted.
    After :data:`REFUSALS_PER_ACCEPT` refusals in one call ``accept()`` says
    "nothing more now" (``BlockingIOError``), and the event loop, which
    accepts in a loop until then, calls again on its next turn.
    """

    __slots__ = ("gate",)

    def __init__(self, gate: ClientConnections, family: socket.AddressFamily) -> None:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on accepted
        # sockets whose proto is IPPROTO_TCP, and accepted sockets copy the
        # listener's proto (0 by default). Without it, Nagle holds each
        # response body behind its headers until the client's delayed ACK,
        # which delays every admission (BENCHMARKS.md, "Profiling").
        super().__init__(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.gate = gate

    def accept(self) -> tuple[socket.socket, object]:
        """The next connection the gate admits (``BlockingIOError`` when none is waiting)."""
        for _ in range(REFUSALS_PER_ACCEPT):
            fd, address = self._accept()  # type: ignore[attr-defined]
            host = str(address[0])
            if self.gate.admit(host):
                conn = CountedConnection(self.family, self.type, self.proto, fileno=fd)
                conn.hold(self.gate, host)
                # As socket.socket.accept: a listener with a timeout hands out
                # blocking sockets whatever the platform's flag inheritance.
                if socket.getdefaulttimeout() is None and self.gettimeout():
                    conn.setblocking(True)
                return conn, address
            _reset(fd)
        raise BlockingIOError(errno.EAGAIN, "refused connections; more may be waiting")


def _reset(fd: int) -> None:
    """Close an accepted descriptor with a reset."""
    refused = socket.socket(fileno=fd)
    try:
        refused.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    except OSError:
        pass  # the client is gone already: a plain close does
    finally:
        refused.close()
