"""AdmissionReview in, AdmissionReview out: the webhook's logic without any web framework.

Two error families, kept apart on purpose (as in kopf and controller-runtime):

* :class:`BadRequest` -- the *envelope* is wrong (not JSON, not an
  AdmissionReview, no uid). There is nobody to answer ``allowed: false`` to,
  so the HTTP layer answers 400 with the one-line message.
* A refused *pod* (:class:`~webhook.engine.InjectionRefused`) is a normal
  review answer: ``allowed: false`` with a ``metav1.Status`` carrying code 400
  and the engine's message, which kubectl shows to the user verbatim.

Everything here is synchronous and pure apart from the namespace, which the
caller looks up first (``target_namespace`` says which, ``needs_namespace``
whether at all) because that lookup may block and belongs to the async edge.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import orjson

from webhook.config import InjectorConfig
from webhook.engine import InjectionRefused, NamespaceLike, Op, inject
from webhook.wire import (
    API_VERSIONS,
    KIND,
    AdmissionRequest,
    AdmissionResponse,
    AdmissionReviewRequest,
    AdmissionReviewResponse,
    ApiVersion,
    StatusReason,
)

# Decision codes for reviews the engine never sees; they join the engine's
# codes as metric labels and in logs.
CODE_NOT_CREATE: Final = "not-create"
CODE_NOT_POD: Final = "not-a-pod"
CODE_REFUSED: Final = "refused"

# Where the pod lives when neither the review nor the pod names a namespace
# (only hand-written reviews; the apiserver always sets request.namespace).
DEFAULT_NAMESPACE: Final = "default"


class BadRequest(ValueError):
    """The request body is not a usable AdmissionReview; the message is one line for the client."""


# --- decoding -------------------------------------------------------------------------------


def parse_json(body: bytes, *, what: str = "request body") -> Any:
    """Decode JSON bytes with orjson, turning every failure into a one-line :class:`BadRequest`.

    orjson validates UTF-8 itself and refuses nesting deeper than 1024 levels
    (a stack-exhaustion guard we rely on rather than re-implement).
    """
    if not body.strip():
        raise BadRequest(f"{what} is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        reason = err.msg
        if "UTF-8" in reason:
            # orjson reports position 0 for encoding errors; find the byte (the
            # error path only, so the happy path never decodes twice).
            try:
                body.decode("utf-8")
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


def decode(body: bytes) -> AdmissionReviewRequest:
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
        response["warnings"] = list(warnings)
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
    response: AdmissionResponse = {
        "uid": uid,
        "allowed": False,
        "status": {"status": "Failure", "code": code, "reason": reason, "message": message},
    }
    if warnings:
        response["warnings"] = list(warnings)
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
        response["warnings"] = list(warnings)
    return response


def wrap(api_version: ApiVersion, response: AdmissionResponse) -> AdmissionReviewResponse:
    """The review to send back, echoing the request's apiVersion (v1 or v1beta1)."""
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}


# --- the review itself ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reviewed:
    """A review answer plus what logs and metrics want to know about it."""

    review: AdmissionReviewResponse
    code: str
    reason: str

    @property
    def response(self) -> AdmissionResponse:
        """The ``response`` part of the review."""
        return self.review["response"]


def is_pod_create(request: AdmissionRequest) -> bool:
    """Whether the engine has anything to say: a CREATE of a Pod (not of a subresource)."""
    return request.get("operation") == "CREATE" and _is_pod(request)


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


def target_namespace(request: AdmissionRequest) -> str:
    """The namespace the pod is created in.

    ``request.namespace`` first: pods in a review often have no
    ``metadata.namespace`` at all (the apiserver fills it in later).
    """
    namespace = request.get("namespace")
    if namespace:
        return namespace
    meta = (request.get("object") or {}).get("metadata")
    own = meta.get("namespace") if isinstance(meta, dict) else None
    return own if isinstance(own, str) and own else DEFAULT_NAMESPACE


def pod_name(request: AdmissionRequest) -> str:
    """The pod's name for logs: name, else ``generateName`` (what a ReplicaSet sends), else ''."""
    meta = (request.get("object") or {}).get("metadata")
    if not isinstance(meta, dict):
        return request.get("name") or ""
    for key in ("name", "generateName"):
        value = meta.get(key)
        if isinstance(value, str) and value:
            return value
    return request.get("name") or ""


def review(
    doc: AdmissionReviewRequest,
    *,
    namespace: NamespaceLike | None,
    config: InjectorConfig,
    warnings: Sequence[str] = (),
) -> Reviewed:
    """Answer one decoded review.

    ``namespace`` is the looked-up namespace of :func:`target_namespace`
    (``None`` is only allowed when :func:`is_pod_create` is false); ``warnings``
    are the caller's (e.g. "namespace unavailable") and are returned to the
    user along with the engine's. ``dryRun`` needs nothing special: the
    injector has no side effects, so a dry run gets exactly the same answer.
    """
    api_version = doc["apiVersion"]
    request = doc["request"]
    uid = request["uid"]
    if request.get("operation") != "CREATE":
        return Reviewed(
            wrap(api_version, allowed(uid, warnings=warnings)),
            CODE_NOT_CREATE,
            f"operation {request.get('operation') or '(none)'} is not CREATE",
        )
    if not _is_pod(request):
        return Reviewed(
            wrap(api_version, allowed(uid, warnings=warnings)),
            CODE_NOT_POD,
            "object is not a Pod",
        )
    obj = request.get("object")
    if obj is None:
        raise BadRequest("request.object is missing for a CREATE of a Pod")
    if namespace is None:
        raise ValueError("review of a pod CREATE needs its namespace")  # a caller's bug
    try:
        result = inject(obj, namespace=namespace, config=config)
    except InjectionRefused as err:
        message = str(err)
        return Reviewed(
            wrap(api_version, denied(uid, message, warnings=warnings)), CODE_REFUSED, message
        )
    except RecursionError:
        # orjson allows 1024 levels; the engine's copies may recurse less deep.
        raise BadRequest("request.object is nested too deeply") from None
    every_warning = [*warnings, *result.warnings]
    answer = (
        patched(uid, result.patch, warnings=every_warning)
        if result.patch
        else allowed(uid, warnings=every_warning)
    )
    return Reviewed(wrap(api_version, answer), result.decision.code, result.decision.reason)
