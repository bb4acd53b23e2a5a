"""HTTP answers and the errors that become them, for every endpoint.

An endpoint returns an :class:`Answer` (or raises one of the errors below,
which :func:`observe_failure` turns into one); ``/mutate`` sends it as bare
ASGI (:meth:`Answer.send`), the FastAPI routes hand it to the framework
(``webhook.service.app``). Handlers never raise to the framework.

Status codes (docs/service.md documents them for users):

* 400 ``{"error": ...}`` -- a body or query that is not usable (both endpoints),
  and a pod the engine refuses on ``/preview``
* 401 -- ``/preview`` in a cluster without a bearer token the API server accepts
  (``webhook.service.preview_access``)
* 403 -- ``/preview`` in a cluster for a namespace the caller may not get
* 413 -- body over ``webhook.service.limits.Limits.max_body_bytes``
* 415 -- ``/mutate`` body not declared JSON; ``/preview`` body neither JSON nor YAML
* 429 -- ``/preview``: too many access reviews for the client's address under way
* 503 -- the memory budget for request bodies is in use (``Retry-After: 1``),
  or no preview slot came free in time, or the API server cannot answer a
  preview's access reviews
* 500 -- only for bugs in this program (tests show no input reaches it)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from webhook.engine.values import escape_controls, shorten
from webhook.service import logs
from webhook.service.asgi import Send
from webhook.service.metrics import Metrics

admission_log = logging.getLogger(logs.ADMISSION_LOGGER)

JSON: Final = "application/json"


class HTTPError(Exception):
    """A client error answered as ``{"error": message}`` with ``status``."""

    def __init__(
        self,
        status: int,
        outcome: str,
        message: str,
        *,
        close: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        # Answered before the body was read: closing is cheaper than draining it.
        self.close = close
        # Sent with the answer (a 401's WWW-Authenticate, a 429's Retry-After).
        self.headers: Mapping[str, str] = headers or {}


class Aborted(Exception):
    """The connection ended before the whole request arrived (a read deadline passed, see
    ``webhook.service.h11_deadlines``, or the client hung up)."""

    def __init__(self, received: int) -> None:
        super().__init__(f"connection closed after {received} bytes of the body")
        self.received = received


def too_large(limit: int) -> HTTPError:
    """413: the body is over ``limit``; the connection is closed rather than drained."""
    return HTTPError(413, "too_large", f"request body is larger than {limit} bytes", close=True)


def busy(message: str) -> HTTPError:
    """503 with ``Retry-After``: come back shortly."""
    return HTTPError(503, "busy", message, close=True)


@dataclass(frozen=True, slots=True)
class Answer:
    """A response not yet sent: by the framework (``webhook.service.app``) or as bare
    ASGI (:meth:`send`), with the same headers in the same order either way."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    media_type: str | None = JSON
    # Sent after the other headers, one ``Warning`` header each (:func:`warning_header`).
    warnings: tuple[str, ...] = ()

    async def send(self, send: Send) -> None:
        """Straight to the server, with the headers a Starlette response would have."""
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()
        ]
        headers.append((b"content-length", str(len(self.body)).encode("latin-1")))
        if self.media_type is not None:
            headers.append((b"content-type", self.media_type.encode("latin-1")))
        headers.extend((b"warning", warning_header(w).encode("latin-1")) for w in self.warnings)
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def json_answer(
    value: Any, status: int = 200, *, headers: Mapping[str, str] | None = None
) -> Answer:
    """``value`` as JSON."""
    # Serialised once, by orjson; FastAPI's JSONResponse would go through json.dumps.
    return Answer(status, orjson.dumps(value), headers or {})


def error_answer(err: HTTPError) -> Answer:
    """``{"error": message}`` with the error's status (and ``Retry-After`` for a 503)."""
    headers = {"Connection": "close"} if err.close else {}
    if err.status == 503:
        headers["Retry-After"] = "1"
    headers.update(err.headers)
    # JSON escapes control characters, but ``jq -r .error`` prints them raw.
    return json_answer({"error": escape_controls(str(err))}, err.status, headers=headers)


def warning_header(text: str) -> str:
    """A ``Warning`` header's value for ``text``."""
    # RFC 7234 warn-code 299, as kube-apiserver sends admission warnings to kubectl.
    clean = escape_controls(text).replace("\\", "\\\\").replace('"', '\\"')
    return f'299 - "{clean.encode("ascii", "replace").decode()}"'


def shown(value: str) -> str:
    """A user-supplied string for a message: quoted, escaped, and cut short."""
    text = repr(value)
    return text if len(text) <= 70 else text[:67] + "..."


def ms(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()``), for log lines."""
    return round((time.perf_counter() - start) * 1000, 3)


def observe_failure(metrics: Metrics, endpoint: str, err: Exception, start: float) -> Answer:
    """Count, log and answer a request that ended without a result.

    ``err`` is an :class:`HTTPError`, an :class:`Aborted`, or a client error
    of another kind (a bad review, a refused preview), answered 400.
    """
    if isinstance(err, Aborted):
        metrics.observe(endpoint, "aborted", time.perf_counter() - start)
        admission_log.info(
            "connection closed before the request was complete",
            extra={
                "fields": {
                    "endpoint": endpoint,
                    "received_bytes": err.received,
                    "duration_ms": ms(start),
                }
            },
        )
        return Answer(400, b"", media_type=None)  # nobody left to read it
    http = err if isinstance(err, HTTPError) else HTTPError(400, "bad_request", str(err))
    metrics.observe(endpoint, http.outcome, time.perf_counter() - start)
    admission_log.info(
        f"bad {endpoint} request",
        extra={
            "fields": {
                "endpoint": endpoint,
                "status": http.status,
                # The client gets the whole message; the log keeps its start
                # (a refusal may quote an object name megabytes long).
                "error": shorten(str(http), 1000, quote=False),
                "duration_ms": ms(start),
            }
        },
    )
    return error_answer(http)
