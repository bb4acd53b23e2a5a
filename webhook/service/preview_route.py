"""``POST /preview``: a dry-run injection of manifests or a review, for people and scripts.

The same engine and the same patch as ``/mutate``, rendered as JSON, YAML, a
patch or a diff (``webhook.manifests.preview``). A preview may be big and
slow to parse (YAML), so it runs in a worker thread, one at a time
(``Limits.previews_at_once``), and its namespace reads share a time budget
(``Limits.preview_lookup_seconds``, see ``webhook.service.namespace_lookup``),
so that every preview is answered within 15 s.

In a cluster the app is given a ``PreviewAccess``
(``webhook.service.preview_access``): the caller is authenticated before
anything else, the ``namespace=`` query authorized before the body is read,
and the namespaces only the body names (objects' ``metadata.namespace``, an
AdmissionReview's ``request.namespace``, ``default``) right after parsing,
before any namespace is read. The reviews' time comes off the reads' budget.

Framework-free like ``/mutate``: it reads the request from the ASGI scope and
``receive`` and returns an :class:`~webhook.service.answers.Answer`, which
``webhook.service.app`` hands to FastAPI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import parse_qsl

import anyio
import anyio.to_thread

from webhook.contract.wire import API_VERSIONS, KIND
from webhook.engine import InjectionRefused, InjectionResult, NamespaceLike
from webhook.engine.values import NAMESPACE_NAME_RULE, is_namespace_name
from webhook.manifests.documents import ManifestError, exact_json, load_objects, objects_of
from webhook.manifests.preview import (
    Assumptions,
    Output,
    inject_all,
    namespace_of,
    parse_pairs,
    render_bytes,
)
from webhook.service import admission
from webhook.service.admission import BadRequest
from webhook.service.answers import (
    JSON,
    Aborted,
    Answer,
    HTTPError,
    busy,
    json_answer,
    observe_failure,
    shown,
)
from webhook.service.asgi import Receive, Scope
from webhook.service.body import check_charset, content_headers, media_type, read_body
from webhook.service.preview_access import Caller
from webhook.service.state import AppState

log = logging.getLogger("webhook.app")

YAML_TYPES: Final = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})
# curl -d/--data-binary without -H sends form-urlencoded; for a preview that means "guess".
SNIFF_TYPES: Final = frozenset({"", "text/plain", "application/x-www-form-urlencoded"})

# /preview query parameters; anything else is a typo worth a 400.
PREVIEW_PARAMS: Final = frozenset({"namespace", "label", "annotation", "output"})

_MEDIA_TYPES: Final = {
    Output.JSON: JSON,
    Output.PATCH: JSON,
    Output.YAML: "application/yaml",
    Output.DIFF: "text/x-diff; charset=utf-8",
}


@dataclass(frozen=True)
class PreviewQuery:
    """What the query string asks of a preview."""

    namespace: str | None
    labels: dict[str, str]
    annotations: dict[str, str]
    output: Output
    json_declared: bool = field(default=False)


def _query_pairs(scope: Scope) -> list[tuple[str, str]]:
    """The query string's ``(name, value)`` pairs in order, decoded as Starlette's
    ``Request.query_params`` decodes them."""
    raw: bytes = scope.get("query_string", b"")
    return parse_qsl(raw.decode("latin-1"), keep_blank_values=True)


def preview_query(pairs: Sequence[tuple[str, str]], *, json_declared: bool) -> PreviewQuery:
    """Check and parse the query; raise :class:`BadRequest` naming what is wrong."""

    def values(name: str) -> list[str]:
        return [value for key, value in pairs if key == name]

    unknown = sorted({key for key, _ in pairs} - PREVIEW_PARAMS)
    if unknown:
        raise BadRequest(
            f"unknown query parameter {shown(unknown[0])} "
            f"(expected {', '.join(sorted(PREVIEW_PARAMS))})"
        )
    for single in ("namespace", "output"):
        if len(values(single)) > 1:
            raise BadRequest(f"query parameter {single!r} is given more than once")
    (output_name,) = values("output") or [Output.JSON.value]
    try:
        output = Output(output_name)
    except ValueError:
        raise BadRequest(
            f"output {shown(output_name)} is not one of {', '.join(o.value for o in Output)}"
        ) from None
    namespace = next(iter(values("namespace")), None) or None
    if namespace is not None and not is_namespace_name(namespace):
        raise BadRequest(
            f"namespace {shown(namespace)} is not a valid namespace name ({NAMESPACE_NAME_RULE})"
        )
    try:
        labels = parse_pairs(values("label"), what="label")
        annotations = parse_pairs(values("annotation"), what="annotation")
    except ValueError as err:
        raise BadRequest(str(err)) from None
    return PreviewQuery(namespace, labels, annotations, output, json_declared)


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


def _parse(
    service: AppState, body: bytearray, query: PreviewQuery
) -> tuple[list[dict[str, Any]], str | None]:
    """The objects to preview and the namespace they default to; in a worker thread (YAML
    parsing can take a while)."""
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
    return _unwrap_review(objects, query.namespace)


def namespaces_read(objects: Sequence[dict[str, Any]], namespace: str | None) -> list[str]:
    """The namespaces a preview of ``objects`` looks up, in order of first use.

    What ``inject_all`` will ask for, up to the first object it refuses
    before reading its namespace (a namespace that differs from the
    requested one, or an invalid name): nothing after that is read.
    """
    names: list[str] = []
    for obj in objects:
        try:
            name = namespace_of(obj, namespace)
        except InjectionRefused:
            break
        if not is_namespace_name(name):
            break
        names.append(name)
    return list(dict.fromkeys(names))


def _render(
    service: AppState,
    objects: list[dict[str, Any]],
    namespace: str | None,
    query: PreviewQuery,
    read_seconds: float,
) -> tuple[bytes, list[str]]:
    """Inject and render; in a worker thread.

    The answer is made here, as the bytes to send: the event loop only hands
    them to the connection, never encodes or copies them.
    """
    reads = service.lookup.within(read_seconds)

    def lookup(name: str) -> NamespaceLike | None:
        if not is_namespace_name(name):
            raise BadRequest(f"{shown(name)} is not a valid namespace name")
        return reads(name)

    assumptions = Assumptions(
        namespace=namespace, labels=query.labels, annotations=query.annotations
    )
    results = inject_all(objects, lookup=lookup, assumptions=assumptions, config=service.config)
    warnings = reads.warnings
    if warnings and query.output is Output.JSON:
        # Namespace warnings belong to every object that lives there; in the
        # JSON view they join each summary's own warnings.
        results = [_with_warnings(result, warnings) for result in results]
    return render_bytes(results, objects, query.output, summaries=True), warnings


def _with_warnings(result: InjectionResult, warnings: Sequence[str]) -> InjectionResult:
    return replace(result, warnings=(*warnings, *result.warnings))


async def _run_preview(
    service: AppState, body: bytearray, query: PreviewQuery, caller: Caller | None
) -> tuple[bytes, list[str]]:
    # One preview at a time (Limits.previews_at_once); a preview that
    # cannot start soon is turned away rather than left to queue. Only
    # the wait is timed: a started preview is bounded by the value and object caps.
    acquired = False
    with anyio.move_on_after(service.limits.preview_wait_seconds):
        await service.preview_slots.acquire()
        acquired = True
    if not acquired:
        raise busy("another preview is being rendered; retry shortly")
    try:
        objects, namespace = await anyio.to_thread.run_sync(_parse, service, body, query)
        read_seconds = service.limits.preview_lookup_seconds
        if caller is not None and service.preview_access is not None:
            # Namespaces only the body names: known now, before any is read.
            await service.preview_access.authorize(caller, namespaces_read(objects, namespace))
            # Reviews and reads share one time budget (docs/service.md, "Limits").
            read_seconds = max(0.0, read_seconds - caller.budget.spent)
        return await anyio.to_thread.run_sync(
            _render, service, objects, namespace, query, read_seconds
        )
    finally:
        service.preview_slots.release()


async def answer(service: AppState, scope: Scope, receive: Receive) -> Answer:
    """Answer one preview request: never raises, every failure is an answer."""
    start = time.perf_counter()
    access = service.preview_access
    with service.budget.reservation() as held:
        try:
            # Who is asking comes first: a caller the cluster does not know
            # learns nothing else, not even what is wrong with the request.
            caller = await access.authenticate(scope) if access is not None else None
            content_type, declared = content_headers(scope)
            media, charset = media_type(content_type)
            if media != JSON and media not in YAML_TYPES and media not in SNIFF_TYPES:
                raise HTTPError(
                    415,
                    "unsupported_media_type",
                    f"Content-Type must be JSON or YAML, not {shown(media)}",
                )
            check_charset(charset)
            query = preview_query(_query_pairs(scope), json_declared=media == JSON)
            if caller is not None and query.namespace is not None and access is not None:
                await access.authorize(caller, [query.namespace])
            body = await read_body(receive, declared, held, service.limits.max_body_bytes)
            rendered, warnings = await _run_preview(service, body, query, caller)
        except (HTTPError, BadRequest, ManifestError, InjectionRefused, Aborted) as err:
            return observe_failure(service.metrics, "preview", err, start)
        except RecursionError:
            # Deep documents that parsed (YAML, or JSON up to orjson's 1024
            # levels) can still be too deep for the engine or the renderers
            # (render.to_json_bytes turns orjson's depth limit into this too).
            return observe_failure(
                service.metrics, "preview", BadRequest("request body is nested too deeply"), start
            )
        except Exception:
            log.exception("internal error in /preview")
            service.metrics.observe("preview", "error", time.perf_counter() - start)
            return json_answer({"error": "internal error"}, 500)
    service.metrics.observe("preview", "ok", time.perf_counter() - start)
    return Answer(200, rendered, media_type=_MEDIA_TYPES[query.output], warnings=tuple(warnings))
