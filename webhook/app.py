"""The HTTP edge: the FastAPI app serving ``/mutate``, ``/preview`` and the probes.

The only module that imports FastAPI. It reads raw bodies itself (with a cap),
checks content types, looks namespaces up without blocking the event loop, and
hands plain dicts to ``webhook.admission`` / ``webhook.preview``. FastAPI never
sees a model of the review: validating a pod with pydantic would cost more
than injecting it and would answer 422 where Kubernetes clients expect 400.

Status codes (README.md, "The HTTPS service", documents them for users):

* 400 ``{"error": ...}`` -- a body or query that is not usable (both endpoints),
  and a pod the engine refuses on ``/preview``
* 413 -- body over :data:`MAX_BODY_BYTES`
* 415 -- ``/mutate`` body not declared JSON; ``/preview`` body neither JSON nor YAML
* 500 -- only for bugs in this program (tests show no input reaches it)
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

import anyio.to_thread
import orjson
from fastapi import APIRouter, FastAPI, Request, Response

from webhook import admission, logs
from webhook.admission import BadRequest
from webhook.config import InjectorConfig
from webhook.engine import InjectionRefused, InjectionResult, NamespaceLike
from webhook.manifests import ManifestError, load_objects
from webhook.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from webhook.metrics import Metrics
from webhook.namespaces import NamespaceSource, NamespaceUnavailable
from webhook.preview import AssumedNamespace, Assumptions, Output, inject_all, parse_pairs, render
from webhook.wire import API_VERSIONS, KIND

# The app's type for other modules, so that this stays the only fastapi import.
App = FastAPI

log = logging.getLogger(__name__)
admission_log = logging.getLogger(logs.ADMISSION_LOGGER)

# kube-apiserver refuses request bodies over 3 MiB, and etcd stores objects of
# at most ~1.5 MiB, so no pod can be bigger than 3 MiB. An AdmissionReview may
# carry two copies (``object`` and, for UPDATE, ``oldObject``) plus the
# envelope (userInfo, options), JSON-escaped: 2 x 3 MiB + 1 MiB of slack
# bounds every legitimate review, while a client cannot make us buffer more.
MAX_BODY_BYTES: Final = 7 * 1024 * 1024

JSON: Final = "application/json"
YAML_TYPES: Final = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})
# curl -d/--data-binary without -H sends form-urlencoded; for a preview that means "guess".
SNIFF_TYPES: Final = frozenset({"", "text/plain", "application/x-www-form-urlencoded"})

# /preview query parameters; anything else is a typo worth a 400.
PREVIEW_PARAMS: Final = frozenset({"namespace", "label", "annotation", "output"})


class TLSState(Protocol):
    """What ``/readyz`` needs of ``webhook.tls.ReloadingTLS``."""

    @property
    def loaded(self) -> bool: ...


class _HTTPError(Exception):
    """A client error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, outcome: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


def _json_response(
    value: Any, status: int = 200, *, headers: Mapping[str, str] | None = None
) -> Response:
    # Serialised once, by orjson; FastAPI's JSONResponse would go through json.dumps.
    return Response(orjson.dumps(value), status_code=status, media_type=JSON, headers=headers)


def _error_response(err: _HTTPError) -> Response:
    # After 413 the rest of the body is unread; closing is cheaper than draining it.
    headers = {"Connection": "close"} if err.status == 413 else None
    return _json_response({"error": str(err)}, err.status, headers=headers)


def _media_type(request: Request) -> tuple[str, str | None]:
    """(type/subtype in lower case, charset or None) of the request's Content-Type."""
    raw = request.headers.get("content-type", "")
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


async def _read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed ``limit``.

    Content-Length is checked first, so an honest client is refused before it
    sends anything; the count while streaming catches chunked bodies and
    clients that lie.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _HTTPError(413, "too_large", f"request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _HTTPError(413, "too_large", f"request body is larger than {limit} bytes")
    return bytes(body)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


@dataclass
class _Service:
    """State shared by the routes; built once in :func:`create_app`."""

    config: InjectorConfig
    namespaces: NamespaceSource
    tls: TLSState | None
    metrics: Metrics
    started: bool = False

    async def namespace(self, name: str) -> tuple[NamespaceLike, tuple[str, ...]]:
        """The namespace for a review: cache first, a blocking fetch in a thread only on a miss."""
        found = self.namespaces.cached(name)
        if found is not None:
            return found, ()
        try:
            found = await anyio.to_thread.run_sync(self.namespaces.fetch, name)
        except NamespaceUnavailable as err:
            return AssumedNamespace(name), (_unavailable(name, err),)
        return (found if found is not None else AssumedNamespace(name)), ()

    def namespace_blocking(self, name: str, warnings: list[str]) -> NamespaceLike | None:
        """The same lookup for code already running in a worker thread (``/preview``)."""
        found = self.namespaces.cached(name)
        if found is not None:
            return found
        try:
            return self.namespaces.fetch(name)
        except NamespaceUnavailable as err:
            warnings.append(_unavailable(name, err))
            return None


def _unavailable(name: str, err: NamespaceUnavailable) -> str:
    return f"namespace {name} could not be read ({err}); treated as having no labels"


# --- /mutate ----------------------------------------------------------------------------


def _admission_router(service: _Service) -> APIRouter:
    router = APIRouter()

    @router.post("/mutate")
    async def mutate(request: Request) -> Response:
        """Answer an AdmissionReview (``?timeout=`` from the apiserver is accepted and ignored)."""
        start = time.perf_counter()
        try:
            media, charset = _media_type(request)
            if media != JSON:
                raise _HTTPError(
                    415,
                    "unsupported_media_type",
                    f"Content-Type must be {JSON}, not {media or '(none)'}",
                )
            _check_charset(charset)
            body = await _read_body(request)
            doc = admission.decode(body)
            req = doc["request"]
            namespace: NamespaceLike | None = None
            warnings: tuple[str, ...] = ()
            if admission.is_pod_create(req):
                namespace, warnings = await service.namespace(admission.target_namespace(req))
            reviewed = admission.review(
                doc, namespace=namespace, config=service.config, warnings=warnings
            )
        except (_HTTPError, BadRequest) as err:
            http = err if isinstance(err, _HTTPError) else _HTTPError(400, "bad_request", str(err))
            service.metrics.observe("mutate", http.outcome, time.perf_counter() - start)
            admission_log.info(
                "bad admission request",
                extra={
                    "fields": {"status": http.status, "error": str(http), "duration_ms": _ms(start)}
                },
            )
            return _error_response(http)
        except Exception:
            # Only a bug gets here; the tests' fuzzing checks that no input does.
            log.exception("internal error in /mutate")
            service.metrics.observe("mutate", "error", time.perf_counter() - start)
            return _json_response({"error": "internal error"}, 500)

        response = reviewed.response
        outcome = "ok" if response["allowed"] else "refused"
        service.metrics.observe("mutate", outcome, time.perf_counter() - start)
        service.metrics.decision(reviewed.code)
        admission_log.info(
            "admission",
            extra={
                "fields": {
                    "uid": req["uid"],
                    "namespace": admission.target_namespace(req),
                    "name": admission.pod_name(req),
                    "operation": req.get("operation"),
                    "dry_run": bool(req.get("dryRun")),
                    "allowed": response["allowed"],
                    "patched": "patch" in response,
                    "code": reviewed.code,
                    "reason": reviewed.reason,
                    "warnings": len(response.get("warnings", ())),
                    "duration_ms": _ms(start),
                }
            },
        )
        return _json_response(reviewed.review)

    return router


# --- /preview ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _PreviewQuery:
    namespace: str | None
    labels: dict[str, str]
    annotations: dict[str, str]
    output: Output


def _preview_query(request: Request) -> _PreviewQuery:
    params = request.query_params
    unknown = sorted(set(params.keys()) - PREVIEW_PARAMS)
    if unknown:
        raise BadRequest(
            f"unknown query parameter {unknown[0]!r} (expected {', '.join(sorted(PREVIEW_PARAMS))})"
        )
    for single in ("namespace", "output"):
        if len(params.getlist(single)) > 1:
            raise BadRequest(f"query parameter {single!r} is given more than once")
    output_name = params.get("output", Output.JSON.value)
    try:
        output = Output(output_name)
    except ValueError:
        raise BadRequest(
            f"output {output_name!r} is not one of {', '.join(o.value for o in Output)}"
        ) from None
    try:
        labels = parse_pairs(params.getlist("label"), what="label")
        annotations = parse_pairs(params.getlist("annotation"), what="annotation")
    except ValueError as err:
        raise BadRequest(str(err)) from None
    return _PreviewQuery(params.get("namespace") or None, labels, annotations, output)


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


def _preview(service: _Service, body: bytes, query: _PreviewQuery) -> tuple[str, list[str]]:
    """Parse, inject and render; runs in a worker thread (YAML parsing can take a while)."""
    objects = load_objects(body, origin="request body")
    if not objects:
        raise BadRequest("request body holds no objects")
    objects, namespace = _unwrap_review(objects, query.namespace)
    warnings: list[str] = []

    def lookup(name: str) -> NamespaceLike | None:
        return service.namespace_blocking(name, warnings)

    assumptions = Assumptions(
        namespace=namespace, labels=query.labels, annotations=query.annotations
    )
    results = inject_all(objects, lookup=lookup, assumptions=assumptions, config=service.config)
    if warnings and query.output is Output.JSON:
        # Namespace warnings belong to every object that lives there; in the
        # JSON view they join each summary's own warnings.
        results = [_with_warnings(result, warnings) for result in results]
    text = render(results, objects, query.output, summaries=True)
    return text, warnings


def _with_warnings(result: InjectionResult, warnings: Sequence[str]) -> InjectionResult:
    return replace(result, warnings=(*warnings, *result.warnings))


def _warning_header(text: str) -> str:
    # RFC 7234 warn-code 299, as kube-apiserver sends admission warnings to kubectl.
    clean = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 - "{clean.encode("ascii", "replace").decode()}"'


def _preview_router(service: _Service) -> APIRouter:
    router = APIRouter()

    @router.post("/preview")
    async def preview(request: Request) -> Response:
        """Dry-run injection of manifests or a review, rendered for people and scripts."""
        start = time.perf_counter()
        try:
            media, charset = _media_type(request)
            if media != JSON and media not in YAML_TYPES and media not in SNIFF_TYPES:
                raise _HTTPError(
                    415,
                    "unsupported_media_type",
                    f"Content-Type must be JSON or YAML, not {media}",
                )
            _check_charset(charset)
            query = _preview_query(request)
            body = await _read_body(request)
            if media == JSON:
                admission.parse_json(body)  # JSON declared: no YAML fallback, JSON's errors
            text, warnings = await anyio.to_thread.run_sync(_preview, service, body, query)
        except (_HTTPError, BadRequest, ManifestError, InjectionRefused) as err:
            http = err if isinstance(err, _HTTPError) else _HTTPError(400, "bad_request", str(err))
            service.metrics.observe("preview", http.outcome, time.perf_counter() - start)
            return _error_response(http)
        except (RecursionError, orjson.JSONEncodeError):
            # Deep documents that parsed (YAML, or JSON up to orjson's 1024
            # levels) can still be too deep for the engine or the renderers.
            service.metrics.observe("preview", "bad_request", time.perf_counter() - start)
            return _error_response(
                _HTTPError(400, "bad_request", "request body is nested too deeply")
            )
        except Exception:
            log.exception("internal error in /preview")
            service.metrics.observe("preview", "error", time.perf_counter() - start)
            return _json_response({"error": "internal error"}, 500)
        service.metrics.observe("preview", "ok", time.perf_counter() - start)
        headers = [("Warning", _warning_header(w)) for w in warnings]
        response = Response(text.encode(), media_type=_MEDIA_TYPES[query.output])
        for name, value in headers:
            response.headers.append(name, value)
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


def create_app(
    *,
    config: InjectorConfig,
    namespaces: NamespaceSource,
    tls: TLSState | None = None,
    metrics: Metrics | None = None,
) -> FastAPI:
    """Build the app. The lifespan starts the namespace source and stops it on shutdown.

    ``tls`` only feeds ``/readyz`` (the server owns the socket); ``None`` means
    the app is served some other way (e.g. in-process tests) and TLS is not
    part of readiness.
    """
    service = _Service(config, namespaces, tls, metrics if metrics is not None else Metrics())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # start() may open connections or read files; keep it off the loop.
        await anyio.to_thread.run_sync(namespaces.start)
        # Everything allocated so far lives as long as the process: move it out
        # of the collector's reach, so a full collection walks only what
        # requests allocate (it was a ~15 ms pause every few hundred big pods).
        gc.collect()
        gc.freeze()
        service.started = True
        try:
            yield
        finally:
            service.started = False
            await anyio.to_thread.run_sync(namespaces.stop)

    # No docs/OpenAPI routes: this is a webhook, and those pages would only be
    # attack surface on a port the apiserver reaches.
    app = FastAPI(
        title="sidecar-injector",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    for router in (_admission_router(service), _preview_router(service), _ops_router(service)):
        app.include_router(router)
    app.state.service = service
    return app
