"""The HTTP edge: the FastAPI app serving ``/mutate``, ``/preview`` and the probes.

The only module that imports FastAPI. It reads raw bodies itself (with a cap
and a process-wide memory budget), checks content types, and hands bytes to
``webhook.service.admission.admit`` / plain dicts to ``webhook.manifests.preview``. FastAPI
never sees a model of the review: validating a pod with pydantic would cost
more than injecting it and would answer 422 where Kubernetes clients expect 400.

Status codes (docs/service.md documents them for users):

* 400 ``{"error": ...}`` -- a body or query that is not usable (both endpoints),
  and a pod the engine refuses on ``/preview``
* 413 -- body over :attr:`Limits.max_body_bytes`
* 415 -- ``/mutate`` body not declared JSON; ``/preview`` body neither JSON nor YAML
* 503 -- the memory budget for request bodies is in use (``Retry-After: 1``),
  or no preview slot came free in time
* 500 -- only for bugs in this program (tests show no input reaches it)

Time bounds on reading a request (headers, body) are the server's
(``webhook.service.server``): a request that misses them ends as a disconnect, which
is counted here as ``aborted``.

``POST /mutate`` is the one hot path (every pod creation in a meshed
namespace waits for it), so it is a bare ASGI endpoint (:class:`_Mutate`)
that the app calls before FastAPI's middleware and routing, which cost as
much per request as the admission itself (``make bench``, Profiling). It
answers exactly as a FastAPI route would; everything else, other methods and
paths included, goes through FastAPI.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol, TypeVar

import anyio
import anyio.to_thread
import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from webhook.cluster.namespaces_file import NamespaceSource, NamespaceUnavailable
from webhook.cluster.namespaces_file import lookup as lookup_blocking
from webhook.contract.wire import API_VERSIONS, KIND
from webhook.engine import InjectionRefused, InjectionResult, NamespaceLike
from webhook.engine.config import InjectorConfig
from webhook.engine.values import NAMESPACE_NAME_RULE, is_namespace_name, shorten
from webhook.manifests.documents import ManifestError, exact_json, load_objects, objects_of
from webhook.manifests.preview import Assumptions, Output, inject_all, parse_pairs, render_bytes
from webhook.service import admission, expiry, logs
from webhook.service.admission import BadRequest
from webhook.service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from webhook.service.metrics import Metrics

# The app's type for other modules, so that this stays the only fastapi import.
App = FastAPI

T = TypeVar("T")

log = logging.getLogger("webhook.app")
admission_log = logging.getLogger(logs.ADMISSION_LOGGER)

KiB: Final = 1024
MiB: Final = 1024 * KiB

JSON: Final = "application/json"
YAML_TYPES: Final = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})
# curl -d/--data-binary without -H sends form-urlencoded; for a preview that means "guess".
SNIFF_TYPES: Final = frozenset({"", "text/plain", "application/x-www-form-urlencoded"})

# /preview query parameters; anything else is a typo worth a 400.
PREVIEW_PARAMS: Final = frozenset({"namespace", "label", "annotation", "output"})


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request, and all requests at once, may cost (docs/service.md, "Limits").

    The defaults keep the process under 400 MiB whatever clients send, for a
    Deployment whose memory limit is 512 MiB; tests shrink them to reach the
    edges quickly.
    """

    # kube-apiserver refuses request bodies over 3 MiB, and etcd stores objects
    # of at most ~1.5 MiB, so no pod can be bigger than 3 MiB. An
    # AdmissionReview may carry two copies (``object`` and, for UPDATE,
    # ``oldObject``) plus the envelope, JSON-escaped: 2 x 3 MiB + 1 MiB of
    # slack bounds every legitimate review.
    max_body_bytes: int = 7 * MiB
    # Bodies held at once, across all requests. Bytes are counted as they
    # arrive, not when a Content-Length announces them: a client that sends
    # headers and then nothing holds nothing. What does not fit is refused at
    # once (503) rather than buffered or queued.
    body_budget_bytes: int = 96 * MiB
    # Bodies over ``large_body_bytes`` (announced or received so far) may only
    # grow while all bodies together hold at most ``large_budget_bytes``. The
    # rest is a reserve that only small bodies reach, and it cannot be used
    # up: a connection carries one request at a time and the server has at
    # most ``webhook.service.server.MAX_OPEN_FILES`` (1,024) connections, so small
    # bodies hold at most 1,024 x 64 KiB = 64 MiB, and 32 MiB of large ones
    # + 64 MiB <= 96 MiB. A review of up to 64 KiB (every ordinary pod: a
    # few KiB) is therefore never refused for memory, whatever other clients
    # do; bigger ones share 32 MiB (four 7 MiB bodies at once), which a
    # client with 32 MiB to upload every read deadline can keep full.
    # tests/test_service_limits.py holds these numbers to that inequality.
    large_body_bytes: int = 64 * KiB
    large_budget_bytes: int = 32 * MiB
    # (A review may hold ``webhook.service.admission.MAX_JSON_VALUES`` values.)
    # Values in a preview body (JSON or YAML; for YAML every scalar, list and
    # map counts, keys included). PyYAML builds ~10-50 us per value and the
    # yaml/diff renderers cost about as much again, so a preview at this
    # bound takes ~4 s on a busy 2-core machine (~1.5 s idle); 4x more would
    # miss the 15 s promise. 32768 values are a few hundred KiB of manifests.
    max_preview_values: int = 32_768
    # Objects in a preview body. The input is bounded by the two caps above,
    # the output by this one: each injected pod gains a sidecar, ~6 KiB of
    # YAML, shown twice in the JSON view (patch and object), ~18 KiB a pod
    # (~37 KiB with the longest settings allowed). 3,638 minimal pods (340 KB,
    # well under the value cap) made a 67 MB answer and took the process to
    # 479-495 MiB; 100 make at most ~4 MiB, in under a second for the slowest
    # outputs (yaml, diff) on a busy 2-core machine.
    # Bulk injection is the CLI's job (``inject -f``), not the webhook's.
    max_preview_objects: int = 100
    # Reviews over this many bytes are decoded, injected and encoded in a
    # worker thread, so that the interpreter's switch interval hands the
    # event loop its turn every few milliseconds: the engine walks every
    # annotation and container in Python, and a 2 MB review with 65,000
    # annotations took 130-180 ms, all of it holding up other admissions.
    # Smaller ones (every ordinary pod) stay on the loop, where they take
    # ~0.2 ms and a thread hop would cost more than it saves. (orjson's
    # parse holds the interpreter lock either way: 15-45 ms for 2-7 MiB.)
    thread_body_bytes: int = 64 * KiB
    # How many such reviews are worked on at once: one, as on the loop, so
    # that at most one big review is held parsed at a time.
    review_threads: int = 1
    # Previews run in a worker thread; one at a time bounds their memory and
    # CPU, and a preview waits at most this long for its turn before it is
    # answered 503, so that every preview is answered within 15 s.
    previews_at_once: int = 1
    preview_wait_seconds: float = 5.0
    # A preview reads the namespaces it names that are not cached, one after
    # another (each read up to 2 s, the source's fetch timeout). Once this
    # much time has gone into reads, the rest are taken from the cache or
    # treated as unlabelled with a warning: a hundred objects in a hundred
    # namespaces while the API server hangs would otherwise take minutes.
    # 5 s wait + 3 s (+ the read under way, 2 s) + the slowest rendering
    # (3.7 s) stays within 15 s.
    preview_lookup_seconds: float = 3.0


class TLSState(Protocol):
    """What ``/readyz`` needs of ``webhook.service.tls.ReloadingTLS``."""

    @property
    def loaded(self) -> bool: ...
    @property
    def not_after(self) -> datetime.datetime | None: ...


class _HTTPError(Exception):
    """A client error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, outcome: str, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        # Answered before the body was read: closing is cheaper than draining it.
        self.close = close


class _Aborted(Exception):
    """The connection ended before the whole request arrived (see ``webhook.service.server``)."""

    def __init__(self, received: int) -> None:
        super().__init__(f"connection closed after {received} bytes of the body")
        self.received = received


def _too_large(limit: int) -> _HTTPError:
    return _HTTPError(413, "too_large", f"request body is larger than {limit} bytes", close=True)


def _busy(message: str) -> _HTTPError:
    return _HTTPError(503, "busy", message, close=True)


@dataclass(frozen=True, slots=True)
class _Answer:
    """A response not yet sent: by FastAPI (:meth:`response`) or as bare ASGI (:meth:`send`)."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    media_type: str | None = JSON

    def response(self) -> Response:
        """As a Starlette response, for the FastAPI routes."""
        return Response(
            self.body, status_code=self.status, media_type=self.media_type, headers=self.headers
        )

    async def send(self, send: Send) -> None:
        """Straight to the server, with the headers :meth:`response` would have."""
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()
        ]
        headers.append((b"content-length", str(len(self.body)).encode("latin-1")))
        if self.media_type is not None:
            headers.append((b"content-type", self.media_type.encode("latin-1")))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def _json_answer(
    value: Any, status: int = 200, *, headers: Mapping[str, str] | None = None
) -> _Answer:
    # Serialised once, by orjson; FastAPI's JSONResponse would go through json.dumps.
    return _Answer(status, orjson.dumps(value), headers or {})


def _json_response(
    value: Any, status: int = 200, *, headers: Mapping[str, str] | None = None
) -> Response:
    return _json_answer(value, status, headers=headers).response()


def _error_answer(err: _HTTPError) -> _Answer:
    headers = {"Connection": "close"} if err.close else {}
    if err.status == 503:
        headers["Retry-After"] = "1"
    return _json_answer({"error": str(err)}, err.status, headers=headers)


def _media_type(raw: str) -> tuple[str, str | None]:
    """(type/subtype in lower case, charset or None) of a Content-Type header."""
    media, *params = raw.split(";")
    charset = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return media.strip().lower(), charset


def _check_charset(charset: str | None) -> None:
    # JSON and YAML over HTTP are UTF-8; a body declared otherwise would be misread.
    if charset not in (None, "utf-8", "utf8"):
        raise _HTTPError(415, "unsupported_media_type", f"charset {charset} is not supported")


class BodyBudget:
    """Bytes of request bodies held in memory at once, across all requests (see :class:`Limits`).

    Single-threaded by design: only the event loop reserves and releases.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.in_use = 0

    @contextmanager
    def reservation(self) -> Iterator[_Reservation]:
        """A reservation that grows with the body and is released when the request is done."""
        held = _Reservation(self)
        try:
            yield held
        finally:
            self.in_use -= held.size
            held.size = 0


class _Reservation:
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
            raise _busy("too much request data is being received right now; retry shortly")

    def grow_to(self, size: int) -> None:
        """Hold ``size`` bytes in all, or raise the 503 that tells the client to come back."""
        extra = size - self.size
        if extra <= 0:
            return
        budget = self._budget
        if size > budget.limits.large_body_bytes:
            self.large = True
        if budget.in_use + extra > self._ceiling():
            raise _busy("too much request data is being received right now; retry shortly")
        budget.in_use += extra
        self.size = size


async def _read_body(
    receive: Receive, declared: str | None, held: _Reservation, limit: int
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
            raise _too_large(limit)
        held.announce(int(declared))
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Aborted(len(body))
        chunk = message.get("body", b"")
        if len(body) + len(chunk) > limit:
            raise _too_large(limit)
        held.grow_to(len(body) + len(chunk))
        body += chunk
        if not message.get("more_body", False):
            return body


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


class _Lookup:
    """``admission.NamespaceLookup`` over a ``NamespaceSource``: a blocking fetch in a thread."""

    def __init__(self, source: NamespaceSource, metrics: Metrics) -> None:
        self._source = source
        self._metrics = metrics

    def cached(self, name: str) -> NamespaceLike | None:
        """From memory, on the event loop."""
        return self._source.cached(name)

    async def fetch(self, name: str, *, reason: str) -> NamespaceLike | None:
        """The source's own answer; the ``kubernetes`` client blocks, so not on the loop."""
        try:
            found = await anyio.to_thread.run_sync(self._source.fetch, name)
        except NamespaceUnavailable:
            self._metrics.namespace_fetch(reason, "unavailable")
            raise
        self._metrics.namespace_fetch(reason, "found" if found is not None else "absent")
        return found


@dataclass
class _Service:
    """State shared by the routes; built once in :func:`create_app`."""

    config: InjectorConfig
    namespaces: NamespaceSource
    tls: TLSState | None
    metrics: Metrics
    limits: Limits
    budget: BodyBudget
    lookup: _Lookup
    preview_slots: anyio.Semaphore
    review_threads: anyio.CapacityLimiter
    started: bool = False

    async def in_thread(self, func: Callable[[], T], /) -> T:
        """An ``admission.Runner``: ``func`` in a worker thread, one review at a time."""
        return await anyio.to_thread.run_sync(func, limiter=self.review_threads)

    def namespace_blocking(
        self, name: str, warnings: list[str], *, read: bool = True
    ) -> NamespaceLike | None:
        """A lookup for ``/preview`` (already in a worker thread): a warning when unavailable.

        A preview changes nothing, so it may go on with an unlabelled
        namespace; ``/mutate`` refuses instead (``admission.admit``). With
        ``read`` false only the cache is consulted (the preview's time for
        reads is spent).
        """
        if not is_namespace_name(name):
            raise BadRequest(f"{_shown(name)} is not a valid namespace name")
        if not read:
            found = self.namespaces.cached(name)
            if found is None:
                warnings.append(
                    f"namespace {name} was not read (this preview's"
                    f" {self.limits.preview_lookup_seconds:g} s for namespace reads are spent);"
                    " treated as having no labels"
                )
            return found
        try:
            return lookup_blocking(self.namespaces, name)
        except NamespaceUnavailable as err:
            warnings.append(
                f"namespace {name} could not be read ({err}); treated as having no labels"
            )
            return None


def _shown(value: str) -> str:
    """A user-supplied string for a message: quoted, escaped, and cut short."""
    text = repr(value)
    return text if len(text) <= 70 else text[:67] + "..."


def _observe_failure(service: _Service, endpoint: str, err: Exception, start: float) -> _Answer:
    """Count, log and answer a request that ended without a result."""
    if isinstance(err, _Aborted):
        service.metrics.observe(endpoint, "aborted", time.perf_counter() - start)
        admission_log.info(
            "connection closed before the request was complete",
            extra={
                "fields": {
                    "endpoint": endpoint,
                    "received_bytes": err.received,
                    "duration_ms": _ms(start),
                }
            },
        )
        return _Answer(400, b"", media_type=None)  # nobody left to read it
    http = err if isinstance(err, _HTTPError) else _HTTPError(400, "bad_request", str(err))
    service.metrics.observe(endpoint, http.outcome, time.perf_counter() - start)
    admission_log.info(
        f"bad {endpoint} request",
        extra={
            "fields": {
                "endpoint": endpoint,
                "status": http.status,
                # The client gets the whole message; the log keeps its start
                # (a refusal may quote an object name megabytes long).
                "error": shorten(str(http), 1000, quote=False),
                "duration_ms": _ms(start),
            }
        },
    )
    return _error_answer(http)


# --- /mutate ----------------------------------------------------------------------------


def _content_headers(scope: Scope) -> tuple[str, str | None]:
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


class _Mutate:
    """``POST /mutate`` as a bare ASGI endpoint (see the module docstring).

    ``?timeout=`` from the apiserver is accepted and ignored. A class rather
    than a function so that the ``Route`` registered with it (see
    :func:`create_app`) takes it for an ASGI app rather than a request handler.
    """

    def __init__(self, service: _Service) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one AdmissionReview."""
        answer = await self._answer(scope, receive)
        await answer.send(send)

    async def _answer(self, scope: Scope, receive: Receive) -> _Answer:
        service = self.service
        start = time.perf_counter()
        with service.budget.reservation() as held:
            try:
                content_type, declared = _content_headers(scope)
                media, charset = _media_type(content_type)
                if media != JSON:
                    raise _HTTPError(
                        415,
                        "unsupported_media_type",
                        f"Content-Type must be {JSON}, not {media or '(none)'}",
                    )
                _check_charset(charset)
                body = await _read_body(receive, declared, held, service.limits.max_body_bytes)
                big = len(body) > service.limits.thread_body_bytes
                reviewed = await admission.admit(
                    body,
                    namespaces=service.lookup,
                    config=service.config,
                    run=service.in_thread if big else admission.inline,
                )
            except (_HTTPError, BadRequest, _Aborted) as err:
                return _observe_failure(service, "mutate", err, start)
            except Exception:
                # Only a bug gets here; the tests' fuzzing checks that no input does.
                log.exception("internal error in /mutate")
                service.metrics.observe("mutate", "error", time.perf_counter() - start)
                return _json_answer({"error": "internal error"}, 500)

        response = reviewed.response
        outcome = "ok" if response["allowed"] else "refused"
        service.metrics.observe("mutate", outcome, time.perf_counter() - start)
        service.metrics.decision(reviewed.code)
        summary = reviewed.request
        admission_log.info(
            "admission",
            extra={
                "fields": {
                    "uid": summary.uid,
                    "namespace": summary.namespace,
                    "name": summary.name,
                    "operation": summary.operation,
                    "dry_run": summary.dry_run,
                    "allowed": response["allowed"],
                    "patched": "patch" in response,
                    "code": reviewed.code,
                    # A refusal names the pod, whose name the apiserver has
                    # not validated yet when it calls us.
                    "reason": shorten(reviewed.reason, 1000, quote=False),
                    "warnings": len(response.get("warnings", ())),
                    "duration_ms": _ms(start),
                }
            },
        )
        return _Answer(200, reviewed.body)


class _WebhookApp(FastAPI):
    """The FastAPI app, with ``POST /mutate`` answered before FastAPI's middleware and routing."""

    def __init__(self, *, mutate: _Mutate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._mutate = mutate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The hot path first, then FastAPI for everything else."""
        if scope["type"] == "http" and scope["path"] == "/mutate" and scope["method"] == "POST":
            await self._mutate(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


# --- /preview ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _PreviewQuery:
    namespace: str | None
    labels: dict[str, str]
    annotations: dict[str, str]
    output: Output
    json_declared: bool = field(default=False)


def _preview_query(request: Request, *, json_declared: bool) -> _PreviewQuery:
    params = request.query_params
    unknown = sorted(set(params.keys()) - PREVIEW_PARAMS)
    if unknown:
        raise BadRequest(
            f"unknown query parameter {_shown(unknown[0])} "
            f"(expected {', '.join(sorted(PREVIEW_PARAMS))})"
        )
    for single in ("namespace", "output"):
        if len(params.getlist(single)) > 1:
            raise BadRequest(f"query parameter {single!r} is given more than once")
    output_name = params.get("output", Output.JSON.value)
    try:
        output = Output(output_name)
    except ValueError:
        raise BadRequest(
            f"output {_shown(output_name)} is not one of {', '.join(o.value for o in Output)}"
        ) from None
    namespace = params.get("namespace") or None
    if namespace is not None and not is_namespace_name(namespace):
        raise BadRequest(
            f"namespace {_shown(namespace)} is not a valid namespace name ({NAMESPACE_NAME_RULE})"
        )
    try:
        labels = parse_pairs(params.getlist("label"), what="label")
        annotations = parse_pairs(params.getlist("annotation"), what="annotation")
    except ValueError as err:
        raise BadRequest(str(err)) from None
    return _PreviewQuery(namespace, labels, annotations, output, json_declared)


def _is_review(obj: dict[str, Any]) -> bool:
    return obj.get("kind") == KIND and obj.get("apiVersion") in API_VERSIONS


def _unwrap_review(
    objects: list[dict[str, Any]], namespace: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """A lone AdmissionReview stands for its ``request.object`` in ``request.namespace``."""
    if not any(_is_review(obj) for obj in objects):
        return objects, namespace
    if len(objects) != 1:
        raise BadRequest("an AdmissionReview must be the only object in the body")
    request = objects[0].get("request")
    if not isinstance(request, dict) or not isinstance(request.get("object"), dict):
        raise BadRequest("the AdmissionReview has no request.object to preview")
    review_ns = request.get("namespace")
    if review_ns is not None and not isinstance(review_ns, str):
        raise BadRequest("request.namespace must be a string")
    return [request["object"]], review_ns or namespace


_MEDIA_TYPES: Final = {
    Output.JSON: JSON,
    Output.PATCH: JSON,
    Output.YAML: "application/yaml",
    Output.DIFF: "text/x-diff; charset=utf-8",
}


def _preview(service: _Service, body: bytearray, query: _PreviewQuery) -> tuple[bytes, list[str]]:
    """Parse, inject and render; runs in a worker thread (YAML parsing can take a while).

    The answer is made here, as the bytes to send: the event loop only hands
    them to the connection, never encodes or copies them.
    """
    limits = service.limits
    if query.json_declared:
        # JSON declared: no YAML fallback, and JSON's own error messages.
        doc = exact_json(
            body,
            admission.parse_json(body, max_values=limits.max_preview_values),
            origin="request body",
        )
        objects = objects_of(doc if isinstance(doc, list) else [doc], origin="request body")
    else:
        objects = load_objects(body, origin="request body", max_values=limits.max_preview_values)
    if not objects:
        raise BadRequest("request body holds no objects")
    if len(objects) > limits.max_preview_objects:
        raise BadRequest(
            f"request body holds {len(objects)} objects; a preview takes at most "
            f"{limits.max_preview_objects} (inject more with: sidecar-injector inject -f FILE)"
        )
    objects, namespace = _unwrap_review(objects, query.namespace)
    warnings: list[str] = []
    reads_end = time.monotonic() + limits.preview_lookup_seconds

    def lookup(name: str) -> NamespaceLike | None:
        return service.namespace_blocking(name, warnings, read=time.monotonic() < reads_end)

    assumptions = Assumptions(
        namespace=namespace, labels=query.labels, annotations=query.annotations
    )
    results = inject_all(objects, lookup=lookup, assumptions=assumptions, config=service.config)
    if warnings and query.output is Output.JSON:
        # Namespace warnings belong to every object that lives there; in the
        # JSON view they join each summary's own warnings.
        results = [_with_warnings(result, warnings) for result in results]
    return render_bytes(results, objects, query.output, summaries=True), warnings


def _with_warnings(result: InjectionResult, warnings: Sequence[str]) -> InjectionResult:
    return replace(result, warnings=(*warnings, *result.warnings))


def _warning_header(text: str) -> str:
    # RFC 7234 warn-code 299, as kube-apiserver sends admission warnings to kubectl.
    clean = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 - "{clean.encode("ascii", "replace").decode()}"'


def _preview_router(service: _Service) -> APIRouter:
    router = APIRouter()

    async def run_preview(body: bytearray, query: _PreviewQuery) -> tuple[bytes, list[str]]:
        # One preview at a time (Limits.previews_at_once); a preview that
        # cannot start soon is turned away rather than left to queue. Only
        # the wait is timed: a started preview is bounded by the value and object caps.
        acquired = False
        with anyio.move_on_after(service.limits.preview_wait_seconds):
            await service.preview_slots.acquire()
            acquired = True
        if not acquired:
            raise _busy("another preview is being rendered; retry shortly")
        try:
            return await anyio.to_thread.run_sync(_preview, service, body, query)
        finally:
            service.preview_slots.release()

    @router.post("/preview")
    async def preview(request: Request) -> Response:
        """Dry-run injection of manifests or a review, rendered for people and scripts."""
        start = time.perf_counter()
        with service.budget.reservation() as held:
            try:
                media, charset = _media_type(request.headers.get("content-type", ""))
                if media != JSON and media not in YAML_TYPES and media not in SNIFF_TYPES:
                    raise _HTTPError(
                        415,
                        "unsupported_media_type",
                        f"Content-Type must be JSON or YAML, not {_shown(media)}",
                    )
                _check_charset(charset)
                query = _preview_query(request, json_declared=media == JSON)
                body = await _read_body(
                    request.receive,
                    request.headers.get("content-length"),
                    held,
                    service.limits.max_body_bytes,
                )
                answer, warnings = await run_preview(body, query)
            except (_HTTPError, BadRequest, ManifestError, InjectionRefused, _Aborted) as err:
                return _observe_failure(service, "preview", err, start).response()
            except RecursionError:
                # Deep documents that parsed (YAML, or JSON up to orjson's 1024
                # levels) can still be too deep for the engine or the renderers
                # (render.to_json_bytes turns orjson's depth limit into this too).
                return _observe_failure(
                    service, "preview", BadRequest("request body is nested too deeply"), start
                ).response()
            except Exception:
                log.exception("internal error in /preview")
                service.metrics.observe("preview", "error", time.perf_counter() - start)
                return _json_response({"error": "internal error"}, 500)
        service.metrics.observe("preview", "ok", time.perf_counter() - start)
        response = Response(answer, media_type=_MEDIA_TYPES[query.output])
        for warning in warnings:
            response.headers.append("Warning", _warning_header(warning))
        return response

    return router


# --- probes and metrics -----------------------------------------------------------------


def _ops_router(service: _Service) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> Response:
        """Alive: the event loop answers. Says nothing about certificates or namespaces."""
        return _json_response({"status": "ok"})

    @router.get("/readyz")
    async def readyz() -> Response:
        """Ready to admit: a certificate is loaded and the namespace source has synced."""
        reasons = []
        if service.tls is not None and not service.tls.loaded:
            reasons.append("no serving certificate loaded")
        elif service.tls is not None and expiry.expired(service.tls.not_after, expiry.utcnow()):
            reasons.append(
                f"the serving certificate expired on {service.tls.not_after:%Y-%m-%d %H:%M} UTC"
            )
        if not service.started:
            reasons.append("starting")
        elif not service.namespaces.is_ready():
            reasons.append("namespace source not synced yet")
        if reasons:
            return _json_response({"status": "not ready", "reasons": reasons}, 503)
        return _json_response({"status": "ready"})

    @router.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text exposition of this app's registry."""
        return Response(service.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    return router


def _timestamp(moment: datetime.datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def create_app(
    *,
    config: InjectorConfig,
    namespaces: NamespaceSource,
    tls: TLSState | None = None,
    metrics: Metrics | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """Build the app. The lifespan starts the namespace source and stops it on shutdown.

    ``tls`` only feeds ``/readyz`` (the server owns the socket); ``None`` means
    the app is served some other way (e.g. in-process tests) and TLS is not
    part of readiness. ``metrics`` is shared with the server (read timeouts).
    """
    metrics = metrics if metrics is not None else Metrics()
    limits = limits if limits is not None else Limits()
    budget = BodyBudget(limits)
    metrics.body_bytes.set_function(lambda: budget.in_use)
    metrics.watch_freshness(namespaces.freshness)
    if tls is not None:
        metrics.certificate_expiry(lambda: _timestamp(tls.not_after))
    service = _Service(
        config=config,
        namespaces=namespaces,
        tls=tls,
        metrics=metrics,
        limits=limits,
        budget=budget,
        lookup=_Lookup(namespaces, metrics),
        preview_slots=anyio.Semaphore(limits.previews_at_once),
        review_threads=anyio.CapacityLimiter(limits.review_threads),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # start() may open connections or read files; keep it off the loop.
        await anyio.to_thread.run_sync(namespaces.start)
        service.started = True
        try:
            async with anyio.create_task_group() as tasks:
                if tls is not None:
                    tasks.start_soon(expiry.watch, lambda: tls.not_after)
                yield
                tasks.cancel_scope.cancel()
        finally:
            service.started = False
            await anyio.to_thread.run_sync(namespaces.stop)

    mutate = _Mutate(service)
    # No docs/OpenAPI routes: this is a webhook, and those pages would only be
    # attack surface on a port the apiserver reaches.
    app = _WebhookApp(
        mutate=mutate,
        title="sidecar-injector",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # Never called for POST /mutate (_WebhookApp takes it first): the route
    # makes the router answer other methods with 405, and redirect
    # ``/mutate/`` to ``/mutate`` (307), as it does for every route.
    app.router.routes.append(Route("/mutate", mutate, methods=["POST"]))
    for router in (_preview_router(service), _ops_router(service)):
        app.include_router(router)
    app.state.service = service
    return app
