"""The HTTP edge: the FastAPI app serving ``/mutate``, ``/preview`` and the probes.

The only module that imports the web framework (FastAPI, Starlette). The
endpoints themselves are framework-free, each in its module, each returning
an ``Answer`` (``webhook.service.answers``): ``/mutate`` (``mutate``),
``/preview`` (``preview_route``), the probes and ``/metrics`` (``probes``).
This module builds the app around them (:func:`create_app`), with the
lifespan that starts and stops the namespace source.

``POST /mutate`` is the one hot path, so it is a bare ASGI endpoint that the
app calls before FastAPI's middleware and routing (:class:`_WebhookApp`);
everything else, other methods and paths included, goes through FastAPI.

Time bounds on reading a request (headers, body) are the server's
(``webhook.service.h11_deadlines``): a request that misses them ends as a
disconnect, which the endpoints count as ``aborted``.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, FastAPI, Request, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from webhook.cluster.namespaces_file import NamespaceSource
from webhook.engine.config import InjectorConfig
from webhook.service import expiry, preview_route, probes
from webhook.service.answers import Answer, warning_header
from webhook.service.body import BodyBudget
from webhook.service.events import EventSink, NoEvents
from webhook.service.limits import Limits
from webhook.service.metrics import Metrics
from webhook.service.mutate import Mutate
from webhook.service.namespace_lookup import SourceLookup
from webhook.service.preview_access import PreviewAccess
from webhook.service.state import AppState, TLSState

# The app's type for other modules, so that this stays the only fastapi import.
App = FastAPI


def _response(answer: Answer) -> Response:
    """An endpoint's answer as a Starlette response, for the FastAPI routes."""
    response = Response(
        answer.body, status_code=answer.status, media_type=answer.media_type, headers=answer.headers
    )
    for warning in answer.warnings:
        response.headers.append("Warning", warning_header(warning))
    return response


class _WebhookApp(FastAPI):
    """The FastAPI app, with ``POST /mutate`` answered before FastAPI's middleware and routing."""

    def __init__(self, *, mutate: Mutate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._mutate = mutate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The hot path first, then FastAPI for everything else."""
        if scope["type"] == "http" and scope["path"] == "/mutate" and scope["method"] == "POST":
            await self._mutate(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _preview_router(service: AppState) -> APIRouter:
    router = APIRouter()

    @router.post("/preview")
    async def preview(request: Request) -> Response:
        """Dry-run injection of manifests or a review, rendered for people and scripts."""
        return _response(await preview_route.answer(service, request.scope, request.receive))

    return router


def _ops_router(service: AppState) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> Response:
        """Alive: the event loop answers. Says nothing about certificates or namespaces."""
        return _response(probes.healthz())

    @router.get("/readyz")
    async def readyz() -> Response:
        """Ready to admit: a certificate is loaded and the namespace source has synced."""
        return _response(probes.readyz(service))

    @router.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text exposition of this app's registry."""
        return _response(probes.metrics(service))

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
    preview_access: PreviewAccess | None = None,
    events: EventSink | None = None,
) -> FastAPI:
    """Build the app. The lifespan starts the namespace source and stops it on shutdown.

    ``tls`` only feeds ``/readyz`` (the server owns the socket); ``None`` means
    the app is served some other way (e.g. in-process tests) and TLS is not
    part of readiness. ``metrics`` is shared with the server (read timeouts).
    ``limits`` (``webhook.service.limits.Limits``) bound what requests cost.
    ``preview_access`` decides who may preview (``webhook.service.preview_access``);
    ``None`` leaves ``/preview`` open, as it is with a namespaces file or no source.
    ``events`` records Events on the pods' owners (``webhook.service.events``);
    the lifespan starts and stops its sender with the namespace source.
    """
    metrics = metrics if metrics is not None else Metrics()
    limits = limits if limits is not None else Limits()
    budget = BodyBudget(limits)
    metrics.body_bytes.set_function(lambda: budget.in_use)
    metrics.watch_freshness(namespaces.freshness)
    if tls is not None:
        metrics.certificate_expiry(lambda: _timestamp(tls.not_after))
    service = AppState(
        config=config,
        namespaces=namespaces,
        tls=tls,
        metrics=metrics,
        limits=limits,
        budget=budget,
        lookup=SourceLookup(namespaces, metrics),
        preview_slots=anyio.Semaphore(limits.previews_at_once),
        review_threads=anyio.CapacityLimiter(limits.review_threads),
        preview_access=preview_access,
        events=events if events is not None else NoEvents(),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # start() may open connections or read files; keep it off the loop.
        await anyio.to_thread.run_sync(namespaces.start)
        service.events.start()
        service.started = True
        try:
            async with anyio.create_task_group() as tasks:
                if tls is not None:
                    tasks.start_soon(expiry.watch, lambda: tls.not_after)
                yield
                tasks.cancel_scope.cancel()
        finally:
            service.started = False
            # Pending Events get a moment to be written; then the watch stops.
            await anyio.to_thread.run_sync(service.events.stop)
            if preview_access is not None:
                preview_access.close()
            await anyio.to_thread.run_sync(namespaces.stop)

    mutate = Mutate(service)
    # No docs/OpenAPI routes: this is a webhook, and those pages would only be
    # attack surface on a port the apiserver reaches.
    app = _WebhookApp(
        mutate=mutate,
        title="sidecar-injector",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # No redirects: Starlette would answer ``/mutate/`` with a 307 to a URL
        # built from the request's Host header, an open redirect for anyone
        # who can reach the Service. Unknown paths, trailing slashes included,
        # are 404.
        redirect_slashes=False,
    )
    # Never called for POST /mutate (_WebhookApp takes it first): the route
    # makes the router answer other methods with 405.
    app.router.routes.append(Route("/mutate", mutate, methods=["POST"]))
    for router in (_preview_router(service), _ops_router(service)):
        app.include_router(router)
    app.state.service = service
    return app
