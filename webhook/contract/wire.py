"""The AdmissionReview wire format, as kube-apiserver sends and expects it.

Typed with ``TypedDict`` rather than models: the body is decoded once by
orjson into plain dicts and the engine works on plain dicts, so a model layer
would only copy (and could drop unknown fields of the pod). These types let
mypy check that ``webhook.service.admission`` reads and writes the fields Kubernetes
defines (``k8s.io/api/admission/v1``), under their wire names. ``v1beta1`` has
the same shape; only ``apiVersion`` differs, and the response must echo it.
"""

from __future__ import annotations

from typing import Any, Final, Literal, NotRequired, TypedDict

GROUP: Final = "admission.k8s.io"
API_V1: Final = "admission.k8s.io/v1"
API_V1BETA1: Final = "admission.k8s.io/v1beta1"
API_VERSIONS: Final = (API_V1, API_V1BETA1)
KIND: Final = "AdmissionReview"

ApiVersion = Literal["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]
Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
PatchType = Literal["JSONPatch"]

# metav1.Status.reason values this webhook uses when it refuses a pod.
StatusReason = Literal["BadRequest", "ServiceUnavailable"]


class GroupVersionKind(TypedDict):
    """``metav1.GroupVersionKind``: ``request.kind`` (group is "" for the core API)."""

    group: str
    version: str
    kind: str


class GroupVersionResource(TypedDict):
    """``metav1.GroupVersionResource``: ``request.resource``."""

    group: str
    version: str
    resource: str


class AdmissionRequest(TypedDict):
    """``admission.AdmissionRequest``. Only ``uid`` is checked before the engine runs."""

    uid: str
    kind: NotRequired[GroupVersionKind]
    resource: NotRequired[GroupVersionResource]
    subResource: NotRequired[str]
    requestKind: NotRequired[GroupVersionKind]
    requestResource: NotRequired[GroupVersionResource]
    requestSubResource: NotRequired[str]
    name: NotRequired[str]
    namespace: NotRequired[str]
    operation: NotRequired[Operation]
    userInfo: NotRequired[dict[str, Any]]  # who asked; not read here
    object: NotRequired[dict[str, Any] | None]
    oldObject: NotRequired[dict[str, Any] | None]
    dryRun: NotRequired[bool]
    options: NotRequired[dict[str, Any] | None]


class Status(TypedDict):
    """The subset of ``metav1.Status`` a webhook returns in ``response.status``."""

    code: int
    message: str
    reason: NotRequired[StatusReason]
    status: NotRequired[Literal["Failure", "Success"]]


class AdmissionResponse(TypedDict):
    """``admission.AdmissionResponse``; ``uid`` must equal the request's."""

    uid: str
    allowed: bool
    status: NotRequired[Status]
    patch: NotRequired[str]  # base64 of the JSON Patch document
    patchType: NotRequired[PatchType]
    auditAnnotations: NotRequired[dict[str, str]]
    warnings: NotRequired[list[str]]


class AdmissionReviewRequest(TypedDict):
    """An incoming review, after :func:`webhook.service.admission.decode` checked its envelope."""

    apiVersion: ApiVersion
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


class AdmissionReviewResponse(TypedDict):
    """The review sent back: same apiVersion and kind, with ``response`` instead of ``request``."""

    apiVersion: ApiVersion
    kind: Literal["AdmissionReview"]
    response: AdmissionResponse
