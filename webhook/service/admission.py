"""AdmissionReview in, AdmissionReview out: the webhook's logic without any web framework.

One entry point, :func:`admit`: body bytes and a namespace lookup in, a
:class:`Reviewed` out. It decodes, decides whether the engine has anything to
say, looks the namespace up (memory first, the API server only when needed),
and applies the two rules that keep pods from being admitted unmeshed by
accident (``CONTRACT.md``, "Never unmeshed by accident"):

* the namespace cannot be read (not cached, and the API server cannot say) ->
  refused with ``status.code`` 503, naming the namespace: fail closed, as
  ``failurePolicy: Fail`` intends; the controllers retry. Only when its labels
  matter: a pod that would not be injected whatever they say (host network,
  Windows, mirror pod, excluded namespace, already injected, opted out) is
  answered without them;
* the cached labels skip the pod (not opted in, or ``disabled``) -> the
  namespace is read once from the API server and the pod decided again, so a
  label set just before the pod (which the apiserver already saw, or it
  would not have called us) counts.

Two error families, kept apart on purpose (as in kopf and controller-runtime):

* :class:`BadRequest` -- the *envelope* is wrong (not JSON, not an
  AdmissionReview, no uid). There is nobody to answer ``allowed: false`` to,
  so the HTTP layer answers 400 with the one-line message.
* A refused *pod* (:class:`~webhook.engine.InjectionRefused`) is a normal
  review answer: ``allowed: false`` with a ``metav1.Status`` carrying code 400
  and the engine's message, which kubectl shows to the user verbatim.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar, cast

import orjson

from webhook.cluster.namespaces_file import NamespaceInfo, NamespaceUnavailable
from webhook.contract import constants
from webhook.contract.wire import (
    API_VERSIONS,
    KIND,
    AdmissionRequest,
    AdmissionResponse,
    AdmissionReviewRequest,
    AdmissionReviewResponse,
    ApiVersion,
    StatusReason,
)
from webhook.engine import (
    LABEL_FREE_SKIPS,
    LABEL_SKIPS,
    InjectionRefused,
    NamespaceLike,
    Op,
    decide,
    inject,
)
from webhook.engine.config import InjectorConfig
from webhook.engine.values import escape_controls, is_namespace_name, shorten
from webhook.engine.workloads import ObjectError, locate_pod, pod_parts
from webhook.manifests.documents import json_value_bound
from webhook.service.events.model import Owner, controller_owner

# Decision codes for reviews the engine never sees; they join the engine's
# codes as metric labels and in logs.
CODE_NOT_CREATE: Final = "not-create"
CODE_NOT_POD: Final = "not-a-pod"
CODE_REFUSED: Final = "refused"
CODE_NAMESPACE_UNAVAILABLE: Final = "namespace-unavailable"

# Kubernetes makes uids of 36 characters; 256 bytes leave room for any other
# client while keeping what is echoed and logged small.
MAX_UID_BYTES: Final = 256

# How many JSON values a review may hold, checked before parsing. Parsing
# builds a Python object per value on the event loop: a full 7 MiB body of the
# costliest shape (empty lists) would take seconds and many times its size in
# memory, while at this bound any shape parses quickly into a bounded heap
# (docs/service.md, "Limits", has the figures). A pod etcd can store (1.5 MiB)
# with realistic content holds far fewer; the count is of ``,``/``[``/``{``
# bytes, so it errs on the side of counting more.
MAX_JSON_VALUES: Final = 131_072

# Pod names as logged: Kubernetes allows 253 characters.
_MAX_LOGGED_NAME: Final = 253


class BadRequest(ValueError):
    """The request body is not a usable AdmissionReview; the message is one line for the client."""


# --- decoding -------------------------------------------------------------------------------


def parse_json(
    body: bytes | bytearray, *, what: str = "request body", max_values: int = MAX_JSON_VALUES
) -> Any:
    """Decode JSON bytes with orjson, turning every failure into a one-line :class:`BadRequest`.

    orjson validates UTF-8 itself and refuses nesting deeper than 1024 levels
    (a stack-exhaustion guard we rely on rather than re-implement). A body
    with more than ``max_values`` values is refused before it is parsed.
    """
    if not body.strip():
        raise BadRequest(f"{what} is empty")
    # Each counted value is a byte, so a body no longer than the bound cannot
    # exceed it: an ordinary review (a few KiB) is not counted at all.
    if len(body) > max_values and json_value_bound(body) > max_values:
        raise BadRequest(f"{what} holds more than {max_values} JSON values")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        reason = err.msg
        if "UTF-8" in reason:
            # orjson reports position 0 for encoding errors; find the byte (the
            # error path only, so the happy path never decodes twice).
            try:
                bytes(body).decode("utf-8")
            except UnicodeDecodeError as found:
                raise BadRequest(f"{what} is not valid UTF-8 (byte {found.start})") from None
            raise BadRequest(f"{what} is not valid UTF-8") from None
        if "depth" in reason or "recursion" in reason.lower():
            raise BadRequest(f"{what} is nested too deeply") from None
        raise BadRequest(
            f"{what} is not valid JSON: {reason} at line {err.lineno} column {err.colno}"
        ) from None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number")


def decode(body: bytes | bytearray) -> AdmissionReviewRequest:
    """Check the envelope of a review body and return it typed; raise :class:`BadRequest`.

    Only what this webhook relies on is checked: apiVersion, kind, a request
    with a non-empty string uid, and the types of the fields it reads. The
    pod itself is the engine's to judge (and to refuse, as a review answer).
    """
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise BadRequest(f"request body must be a JSON object, not {_type_name(doc)}")
    api_version = doc.get("apiVersion")
    kind = doc.get("kind")
    if api_version not in API_VERSIONS or kind != KIND:
        raise BadRequest(
            f"expected kind AdmissionReview in {' or '.join(API_VERSIONS)}, "
            f"got apiVersion {_short(api_version)} kind {_short(kind)}"
        )
    request = doc.get("request")
    if not isinstance(request, dict):
        raise BadRequest(
            "AdmissionReview has no request"
            if request is None
            else f"request must be an object, not {_type_name(request)}"
        )
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadRequest("request.uid is missing or empty")
    if len(uid) > MAX_UID_BYTES or len(uid.encode()) > MAX_UID_BYTES:
        # Not echoed: the answer and the log line would carry it otherwise.
        raise BadRequest(f"request.uid is longer than {MAX_UID_BYTES} bytes")
    for field, types in _REQUEST_FIELDS.items():
        value = request.get(field)
        if value is not None and not isinstance(value, types):
            raise BadRequest(f"request.{field} must not be {_type_name(value)}")
    return cast("AdmissionReviewRequest", doc)


# Fields read below, with the JSON types the API defines for them.
_REQUEST_FIELDS: Final[dict[str, type | tuple[type, ...]]] = {
    "kind": dict,
    "resource": dict,
    "subResource": str,
    "namespace": str,
    "operation": str,
    "object": dict,
    "dryRun": bool,
}


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else _type_name(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- response constructors (controller-runtime's Allowed / Denied / Patched) ---------------


def allowed(uid: str, *, warnings: Sequence[str] = ()) -> AdmissionResponse:
    """Admit unchanged."""
    response: AdmissionResponse = {"uid": uid, "allowed": True}
    if warnings:
        response["warnings"] = _shown(warnings)
    return response


def denied(
    uid: str,
    message: str,
    *,
    code: int = 400,
    reason: StatusReason = "BadRequest",
    warnings: Sequence[str] = (),
) -> AdmissionResponse:
    """Refuse, with a ``metav1.Status`` the apiserver shows to whoever created the pod."""
    shown = escape_controls(message)
    response: AdmissionResponse = {
        "uid": uid,
        "allowed": False,
        "status": {"status": "Failure", "code": code, "reason": reason, "message": shown},
    }
    if warnings:
        response["warnings"] = _shown(warnings)
    return response


def patched(uid: str, patch: Sequence[Op], *, warnings: Sequence[str] = ()) -> AdmissionResponse:
    """Admit with a JSON Patch (base64 of its JSON, as the API wants bytes)."""
    response: AdmissionResponse = {
        "uid": uid,
        "allowed": True,
        "patchType": "JSONPatch",
        "patch": base64.b64encode(orjson.dumps(list(patch))).decode("ascii"),
    }
    if warnings:
        response["warnings"] = _shown(warnings)
    return response


def _shown(warnings: Sequence[str]) -> list[str]:
    # kubectl prints messages and warnings to its user's terminal as they
    # come: a pod named with an escape sequence must not reach it raw.
    return [escape_controls(warning) for warning in warnings]


def wrap(api_version: ApiVersion, response: AdmissionResponse) -> AdmissionReviewResponse:
    """The review to send back, echoing the request's apiVersion (v1 or v1beta1)."""
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}


# --- the review itself ----------------------------------------------------------------------


class NamespaceLookup(Protocol):
    """Where :func:`admit` finds namespaces: memory first, the source itself when needed.

    The HTTP edge adapts a ``webhook.cluster.namespaces_file.NamespaceSource`` to this
    (running the blocking ``fetch`` in a worker thread, counting lookups).
    """

    def cached(self, name: str) -> NamespaceLike | None:
        """The namespace as last known, from memory; ``None`` when not known."""
        ...

    async def fetch(self, name: str, *, reason: str) -> NamespaceLike | None:
        """Read the namespace from its source; ``None`` if it does not exist.

        ``reason`` is ``"miss"`` (not cached) or ``"recheck"`` (cached with
        labels that skip the pod). Raises ``NamespaceUnavailable`` when the source cannot tell.
        """
        ...


@dataclass(frozen=True, slots=True)
class RequestSummary:
    """What logs say about a request: never the pod itself (it may hold secrets).

    ``owner``: the pod's controlling owner that gets its Events, if any
    (``webhook.service.events``).
    """

    uid: str
    namespace: str
    name: str
    operation: str
    dry_run: bool
    owner: Owner | None = None


@dataclass(frozen=True, slots=True)
class Reviewed:
    """A review answer plus what logs and metrics want to know about it."""

    review: AdmissionReviewResponse
    code: str
    reason: str
    request: RequestSummary
    # The review as the JSON bytes to send, made where the review was made
    # (in a worker thread for a big review, see :func:`admit`).
    body: bytes

    @property
    def response(self) -> AdmissionResponse:
        """The ``response`` part of the review."""
        return self.review["response"]


def _reviewed(
    review: AdmissionReviewResponse, code: str, reason: str, request: RequestSummary
) -> Reviewed:
    return Reviewed(review, code, reason, request, orjson.dumps(review))


@dataclass(frozen=True, slots=True)
class NeedsNamespace:
    """A review that can only be answered once its namespace is read from the API server.

    Holds no part of the parsed review: parsed, a review takes several times
    its size, and the HTTP edge budgets request memory by body bytes; the
    body is decoded again after the read (a rare path: a new namespace, a
    stale cache).
    """

    name: str
    # "miss" (not cached) or "recheck" (cached with labels that skip the pod).
    reason: str
    api_version: ApiVersion
    uid: str
    summary: RequestSummary


T = TypeVar("T")


class Runner(Protocol):
    """How :func:`admit` runs its CPU-bound steps: inline, or in a worker thread."""

    def __call__(self, func: Callable[[], T], /) -> Awaitable[T]: ...


async def inline(func: Callable[[], T], /) -> T:
    """The :class:`Runner` that runs on the caller's event loop (small reviews)."""
    return func()


def _is_pod(request: AdmissionRequest) -> bool:
    if request.get("subResource"):
        return False  # pods/binding, pods/eviction, pods/ephemeralcontainers...
    kind = request.get("kind")
    if kind is not None:
        return kind.get("group") == "" and kind.get("kind") == "Pod"
    resource = request.get("resource")
    if resource is not None:
        return resource.get("group") == "" and resource.get("resource") == "pods"
    obj = request.get("object") or {}
    return obj.get("apiVersion") == "v1" and obj.get("kind") == "Pod"


def _target_namespace(request: AdmissionRequest) -> str:
    """The namespace the pod is created in.

    ``request.namespace`` first: pods in a review often have no
    ``metadata.namespace`` at all (the apiserver fills it in later).
    """
    namespace = request.get("namespace")
    if namespace:
        return namespace
    meta = (request.get("object") or {}).get("metadata")
    own = meta.get("namespace") if isinstance(meta, dict) else None
    return own if isinstance(own, str) and own else constants.DEFAULT_NAMESPACE


def _pod_name(request: AdmissionRequest) -> str:
    """The pod's name for logs: name, else ``generateName`` (what a ReplicaSet sends), else ''."""
    meta = (request.get("object") or {}).get("metadata")
    name: Any = request.get("name") or ""
    if isinstance(meta, dict):
        for key in ("name", "generateName"):
            value = meta.get(key)
            if isinstance(value, str) and value:
                name = value
                break
    # What a client sends may be megabytes long.
    return shorten(name if isinstance(name, str) else "", _MAX_LOGGED_NAME, quote=False)


def _summary(request: AdmissionRequest, namespace: str) -> RequestSummary:
    shown = shorten(namespace, 63, quote=False)
    return RequestSummary(
        uid=request["uid"],
        namespace=shown,
        name=_pod_name(request),
        operation=shorten(str(request.get("operation") or ""), 16, quote=False),
        dry_run=bool(request.get("dryRun")),
        owner=controller_owner(request.get("object") or {}, shown),
    )


def _review(
    doc: AdmissionReviewRequest, *, namespace: NamespaceLike, config: InjectorConfig
) -> Reviewed:
    """Run the engine on a pod CREATE whose namespace is known."""
    api_version = doc["apiVersion"]
    request = doc["request"]
    uid = request["uid"]
    summary = _summary(request, namespace.name)
    obj = request.get("object")
    if obj is None:
        raise BadRequest("request.object is missing for a CREATE of a Pod")
    try:
        result = inject(obj, namespace=namespace, config=config)
    except InjectionRefused as err:
        message = str(err)
        return _reviewed(wrap(api_version, denied(uid, message)), CODE_REFUSED, message, summary)
    except RecursionError:
        # orjson allows 1024 levels; the engine's copies may recurse less deep.
        raise BadRequest("request.object is nested too deeply") from None
    answer = (
        patched(uid, result.patch, warnings=result.warnings)
        if result.patch
        else allowed(uid, warnings=result.warnings)
    )
    return _reviewed(
        wrap(api_version, answer), result.decision.code, result.decision.reason, summary
    )


def _label_free_skip(obj: dict[str, Any], name: str, config: InjectorConfig) -> bool:
    """Whether the engine would skip this pod whatever its namespace's labels say.

    Only the decision, without settings or a sidecar: a pod that may need
    the namespace's labels is injected once, after they are read, not twice.
    A pod the engine cannot read is not a skip (it is refused after the read,
    as it is with the namespace cached).
    """
    try:
        location = locate_pod(obj)
        if location is None:
            return False
        meta, spec = pod_parts(obj, location)
    except ObjectError:
        return False
    decision = decide(meta, spec, namespace=NamespaceInfo(name), config=config)
    return decision.code in LABEL_FREE_SKIPS


def review_cached(
    body: bytes | bytearray,
    *,
    cached: Callable[[str], NamespaceLike | None],
    config: InjectorConfig,
) -> Reviewed | NeedsNamespace:
    """Answer from the body and the namespace cache, or say which namespace must be read.

    Raises :class:`BadRequest` for a bad envelope.
    """
    doc = decode(body)
    request = doc["request"]
    api_version, uid = doc["apiVersion"], request["uid"]
    if request.get("operation") != "CREATE":
        operation = str(request.get("operation") or "(none)")
        reason = f"operation {shorten(operation, 16, quote=False)} is not CREATE"
        summary = _summary(request, str(request.get("namespace") or ""))
        return _reviewed(wrap(api_version, allowed(uid)), CODE_NOT_CREATE, reason, summary)
    if not _is_pod(request):
        summary = _summary(request, str(request.get("namespace") or ""))
        return _reviewed(
            wrap(api_version, allowed(uid)), CODE_NOT_POD, "object is not a Pod", summary
        )
    name = _target_namespace(request)
    if not is_namespace_name(name):
        # The apiserver only sends real names; this one would end up in an API URL.
        raise BadRequest("the pod's namespace is not a valid namespace name")

    known = cached(name)
    if known is not None:
        reviewed = _review(doc, namespace=known, config=config)
        if reviewed.code not in LABEL_SKIPS:
            return reviewed
        reason = "recheck"
    else:
        # What no label could change needs no read, and so holds while the
        # API server is unreachable. (No object: _review says so at once.)
        obj = request.get("object")
        if obj is None or _label_free_skip(obj, name, config):
            return _review(doc, namespace=NamespaceInfo(name), config=config)
        reason = "miss"
    return NeedsNamespace(name, reason, api_version, uid, _summary(request, name))


def review_fetched(
    body: bytes | bytearray,
    pending: NeedsNamespace,
    fresh: NamespaceLike | None,
    *,
    config: InjectorConfig,
) -> Reviewed:
    """Answer with the namespace as the API server has it (``None``: it does not exist)."""
    # A namespace the API server does not know has no labels; the apiserver
    # will refuse the pod itself.
    namespace = fresh if fresh is not None else NamespaceInfo(pending.name)
    return _review(decode(body), namespace=namespace, config=config)


def unavailable(pending: NeedsNamespace, err: NamespaceUnavailable) -> Reviewed:
    """Refuse (503 in the review) a pod whose namespace could not be read: fail closed."""
    message = (
        f"namespace {pending.name} could not be read to decide on sidecar injection ({err}); "
        "refusing the pod rather than admitting it without its proxy, retry shortly"
    )
    answer = denied(pending.uid, message, code=503, reason="ServiceUnavailable")
    return _reviewed(
        wrap(pending.api_version, answer), CODE_NAMESPACE_UNAVAILABLE, message, pending.summary
    )


async def admit(
    body: bytes | bytearray,
    *,
    namespaces: NamespaceLookup,
    config: InjectorConfig,
    run: Runner = inline,
) -> Reviewed:
    """Answer one AdmissionReview body; raise :class:`BadRequest` for a bad envelope.

    ``run`` runs the CPU-bound steps (decoding, the engine, encoding the
    answer): the HTTP edge passes a worker thread for big bodies, so that
    the event loop keeps its turns while they run. The namespace read, when
    one is needed, is awaited between them. A dry run gets exactly the same
    answer: the one side effect, an Event on the pod's owner, is the HTTP
    edge's to make, and it makes none for a dry run (``sideEffects:
    NoneOnDryRun``).
    """
    first = await run(lambda: review_cached(body, cached=namespaces.cached, config=config))
    if isinstance(first, Reviewed):
        return first
    try:
        fresh = await namespaces.fetch(first.name, reason=first.reason)
    except NamespaceUnavailable as err:
        return unavailable(first, err)
    return await run(lambda: review_fetched(body, first, fresh, config=config))
