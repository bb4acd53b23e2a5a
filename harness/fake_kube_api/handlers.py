"""Ready-made route handlers for :class:`~harness.fake_kube_api.FakeKubeAPI`.

Each function returns a handler for :meth:`FakeKubeAPI.route`, e.g.::

    api.route("/api/v1/pods", handlers.endless_pages(lambda n: {"metadata": {"name": f"p{n}"}}))
    api.route("/version", handlers.held(handlers.json_reply({"gitVersion": "v1.37.2"})))
    api.route(handlers.TOKEN_REVIEWS, handlers.token_review({"good-token": "alice"}))

Anything that holds a request waits on ``api.released`` (set by
``api.release()`` and ``api.stop()``), never on a fixed time alone, and
gives up after the server's hold cap.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from harness.fake_kube_api.server import Handler, Request
from harness.fake_kube_api.wire import MAX_HOLD_SECONDS, status

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"  # noqa: S105 - an API path
SUBJECT_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


def json_reply(body: Any, code: int = 200) -> Handler:
    """Always ``body`` as JSON with status ``code``."""

    def answer(request: Request, path: str, query: dict[str, str]) -> None:
        request.send_json(code, body)

    return answer


def status_reply(code: int, reason: str, message: str) -> Handler:
    """Always a ``Status`` error (403 Forbidden, 500 InternalError...)."""
    return json_reply(status(code, reason, message), code)


def held(then: Handler, *, delay: float | None = None) -> Handler:
    """Answer with ``then`` only once the server is released (or ``delay`` seconds passed).

    A slow GET: the request counts in ``calls`` at once, the answer waits.
    Without ``delay`` it waits for the release (the hold cap at most).
    """

    def answer(request: Request, path: str, query: dict[str, str]) -> None:
        released = request.api.released.wait(MAX_HOLD_SECONDS if delay is None else delay)
        if released and request.api.down:
            return  # the server went down meanwhile: no answer at all
        then(request, path, query)

    return answer


def hang() -> Handler:
    """Never answer: hold the request until the server is released or stops."""

    def answer(request: Request, path: str, query: dict[str, str]) -> None:
        request.api.released.wait(MAX_HOLD_SECONDS)

    return answer


def trickle(*, interval: float = 0.05) -> Handler:
    """Promise a long body and send it a byte per ``interval`` until released."""

    def answer(request: Request, path: str, query: dict[str, str]) -> None:
        request.trickle(interval=interval)

    return answer


def endless_chunks(*, interval: float = 0.05, chunk: bytes = b" ") -> Handler:
    """A 200 whose chunked body never ends: ``chunk`` every ``interval`` until released.

    No Content-Length to refuse it by: a client learns it is too big, or too
    late, only while reading (``interval=0`` floods, a small one trickles).
    """

    def answer(request: Request, path: str, query: dict[str, str]) -> None:
        request.start_chunked(200)
        deadline = time.monotonic() + MAX_HOLD_SECONDS
        with contextlib.suppress(OSError):
            request.chunk(b"{")
            while time.monotonic() < deadline and not request.api.released.is_set():
                request.chunk(chunk)
                if interval:
                    request.api.released.wait(interval)
        # The body never ended properly: the connection cannot carry another answer.
        request.close_connection = True

    return answer


def huge_page(size: int, *, kind: str = "List", item_bytes: int = 4096) -> Handler:
    """A well-formed list of about ``size`` bytes (padded items), sent with a Content-Length.

    For bounds on a page's size: a client that reads it all can parse it,
    one that stops at its limit sees a valid start.
    """

    def answer(request: Request, path: str, query: dict[str, str]) -> None:
        request.send_raw(200, big_list(size, kind=kind, item_bytes=item_bytes), _JSON)

    return answer


def unframed(size: int, *, chunk: int = 64 * 1024) -> Handler:
    """A 200 whose body is ``size`` bytes of blanks, with neither a Content-Length nor chunks.

    The body ends only when the server closes the connection (as an HTTP/1.0
    server or a proxy may send one), so nothing tells the client its size
    up front: a bound on a body must hold while the body streams in.
    """

    def answer(request: Request, path: str, query: dict[str, str]) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Connection", "close")
        request.end_headers()
        request.close_connection = True
        data, sent = b" " * chunk, 0
        with contextlib.suppress(OSError):  # the client stopped reading: what bounds are for
            while sent < size:
                request.wfile.write(data[: size - sent])
                sent += min(chunk, size - sent)

    return answer


def big_list(size: int, *, kind: str = "List", item_bytes: int = 4096) -> bytes:
    """The body :func:`huge_page` sends: at least ``size`` bytes of valid JSON."""
    head = f'{{"kind":"{kind}","apiVersion":"v1","metadata":{{"resourceVersion":"1"}},"items":['
    items: list[str] = []
    total = len(head) + 2
    pad = max(item_bytes - 40, 1)
    while total < size:
        item = f'{{"metadata":{{"name":"filler-{len(items)}","labels":{{"a":"{"x" * pad}"}}}}}}'
        items.append(item)
        total += len(item) + 1
    return (head + ",".join(items) + "]}").encode()


def endless_pages(
    item: Callable[[int], Mapping[str, Any]], *, kind: str = "List", per_page: int = 1
) -> Handler:
    """List pages that never end: each holds ``per_page`` items and a ``continue`` token.

    ``item(n)`` makes the n-th item (from 0). The pages served so far are
    the calls to the route's prefix.
    """
    served = 0

    def answer(request: Request, path: str, query: dict[str, str]) -> None:
        nonlocal served
        first, served = served, served + per_page
        page = {
            "kind": kind,
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "1", "continue": f"page-{served}"},
            "items": [dict(item(n)) for n in range(first, served)],
        }
        request.send_json(200, page)

    return answer


def pages(*documents: Mapping[str, Any], kind: str = "List") -> Handler:
    """A list in pages, one per ``documents`` entry's ``items``, linked by ``continue``.

    Each entry is ``{"items": [...]}``; the first request gets page 0, a
    request with ``continue=page-N`` page N.
    """

    def answer(request: Request, path: str, query: dict[str, str]) -> None:
        index = int(query.get("continue", "page-0").removeprefix("page-") or 0)
        metadata: dict[str, Any] = {"resourceVersion": "1"}
        if index + 1 < len(documents):
            metadata["continue"] = f"page-{index + 1}"
        body = {"kind": kind, "apiVersion": "v1", "metadata": metadata}
        body["items"] = list(documents[index].get("items", []))
        request.send_json(200, body)

    return answer


def token_review(users: Mapping[str, str], *, groups: Sequence[str] = ()) -> Handler:
    """``POST`` TokenReview: tokens in ``users`` authenticate as that user, others do not."""

    def answer(request: Request, path: str, query: dict[str, str]) -> None:
        review = _request_json(request)
        token = review.get("spec", {}).get("token", "")
        user = users.get(token)
        result: dict[str, Any] = {"authenticated": user is not None}
        if user is not None:
            result["user"] = {"username": user, "groups": list(groups)}
        else:
            result["error"] = "invalid bearer token"
        request.send_json(201, {**_echo(review, "TokenReview"), "status": result})

    return answer


def subject_access_review(allow: Callable[[Mapping[str, Any]], bool] | bool) -> Handler:
    """``POST`` SubjectAccessReview: allowed when ``allow`` is true (or says so for the spec)."""

    def answer(request: Request, path: str, query: dict[str, str]) -> None:
        review = _request_json(request)
        spec = review.get("spec", {})
        allowed = allow(spec) if callable(allow) else allow
        result: dict[str, Any] = {"allowed": allowed}
        if not allowed:
            result["reason"] = "denied by the fake API server"
        request.send_json(201, {**_echo(review, "SubjectAccessReview"), "status": result})

    return answer


_JSON = (("Content-Type", "application/json"),)


def _request_json(request: Request) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        found = json.loads(request.body or b"{}")
        if isinstance(found, dict):
            return found
    return {}


def _echo(review: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return {
        "apiVersion": review.get("apiVersion", "v1"),
        "kind": kind,
        "metadata": {},
        "spec": review.get("spec", {}),
    }
