"""Request bodies: their content type, and reading them within a memory budget.

Every endpoint reads its body here, from the ASGI ``receive``, never through
the framework: the size cap (413) and the process-wide budget (503) apply as
bytes arrive (:class:`BodyBudget`, sized by ``webhook.service.limits.Limits``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from webhook.service.answers import Aborted, HTTPError, busy, too_large
from webhook.service.asgi import Receive, Scope
from webhook.service.limits import Limits


def media_type(raw: str) -> tuple[str, str | None]:
    """(type/subtype in lower case, charset or None) of a Content-Type header."""
    media, *params = raw.split(";")
    charset = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return media.strip().lower(), charset


def check_charset(charset: str | None) -> None:
    """Refuse (415) a body declared in a charset other than UTF-8."""
    # JSON and YAML over HTTP are UTF-8; a body declared otherwise would be misread.
    if charset not in (None, "utf-8", "utf8"):
        raise HTTPError(415, "unsupported_media_type", f"charset {charset} is not supported")


class BodyBudget:
    """Bytes of request bodies held in memory at once, across all requests (see ``Limits``).

    Single-threaded by design: only the event loop reserves and releases.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.in_use = 0

    @contextmanager
    def reservation(self) -> Iterator[Reservation]:
        """A reservation that grows with the body and is released when the request is done."""
        held = Reservation(self)
        try:
            yield held
        finally:
            self.in_use -= held.size
            held.size = 0


class Reservation:
    """One request's share of a :class:`BodyBudget`: the bytes of its body received so far."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.size = 0
        # Announced or grown over Limits.large_body_bytes: held to the large budget.
        self.large = False

    def _ceiling(self) -> int:
        limits = self._budget.limits
        return limits.large_budget_bytes if self.large else limits.body_budget_bytes

    def announce(self, declared: int) -> None:
        """Classify by the announced length, and refuse at once what could not fit now.

        Nothing is reserved: an honest client that cannot be served is told
        before it sends its body, and one that sends nothing costs nothing.
        """
        budget = self._budget
        if declared > budget.limits.large_body_bytes:
            self.large = True
        if budget.in_use + declared > self._ceiling():
            raise busy("too much request data is being received right now; retry shortly")

    def grow_to(self, size: int) -> None:
        """Hold ``size`` bytes in all, or raise the 503 that tells the client to come back."""
        extra = size - self.size
        if extra <= 0:
            return
        budget = self._budget
        if size > budget.limits.large_body_bytes:
            self.large = True
        if budget.in_use + extra > self._ceiling():
            raise busy("too much request data is being received right now; retry shortly")
        budget.in_use += extra
        self.size = size


async def read_body(
    receive: Receive, declared: str | None, held: Reservation, limit: int
) -> bytearray:
    """The whole body, within ``limit`` (413) and the memory budget (503).

    Read from the ASGI ``receive`` (what Starlette's ``Request.stream`` does).
    ``declared`` (Content-Length) is checked first, so an honest client is
    answered before it sends anything; bytes are reserved as they arrive, so
    a client that announces a body and stalls holds only what it sent (and
    only until the body deadline). The count while reading catches chunked
    bodies and clients that lie. The body stays a ``bytearray``: orjson and
    the YAML path take it without a copy.
    """
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise too_large(limit)
        held.announce(int(declared))
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Aborted(len(body))
        chunk = message.get("body", b"")
        if len(body) + len(chunk) > limit:
            raise too_large(limit)
        held.grow_to(len(body) + len(chunk))
        body += chunk
        if not message.get("more_body", False):
            return body


def content_headers(scope: Scope) -> tuple[str, str | None]:
    """Content-Type ("" when absent) and Content-Length of a request, from its ASGI scope.

    Header names arrive in lower case (ASGI); the first of a repeated header
    counts, as with Starlette's ``Headers.get``.
    """
    content_type: str | None = None
    content_length: str | None = None
    for name, value in scope["headers"]:
        if name == b"content-type" and content_type is None:
            content_type = value.decode("latin-1")
        elif name == b"content-length" and content_length is None:
            content_length = value.decode("latin-1")
    return content_type or "", content_length
