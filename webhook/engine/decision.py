"""Whether a pod gets the sidecar, decided before anything is built.

The order is the contract's, first match wins. Every outcome carries a stable
``code`` (a metrics label, never reworded) and a ``reason`` for humans (logs,
previews, refusals). Nothing here allocates beyond the Decision itself: this
runs for every pod in every opted-in namespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from webhook import constants
from webhook.config import InjectorConfig


class NamespaceLike(Protocol):
    """What the engine needs to know about a namespace (``NamespaceInfo`` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def annotations(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class Decision:
    """Inject or not, a stable code for metrics, and a sentence for people."""

    inject: bool
    code: str
    reason: str


def decide(
    meta: Mapping[str, Any],
    spec: Mapping[str, Any],
    *,
    namespace: NamespaceLike,
    config: InjectorConfig,
) -> Decision:
    """Apply the contract's decision order to one pod (or pod template).

    ``meta`` and ``spec`` are the pod's metadata and spec; their label and
    annotation maps must already be known to be string maps (the caller checks).
    Steps 1 (operation) and the object kind are the admission layer's.
    """
    labels: Mapping[str, str] = meta.get("labels") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}

    if spec.get("hostNetwork") is True:
        return Decision(False, "host-network", "pod uses the host network namespace")
    if constants.MIRROR_POD_ANNOTATION in annotations:
        return Decision(False, "mirror-pod", "static (mirror) pods are managed by the kubelet")
    if namespace.name in config.excluded_namespaces:
        return Decision(
            False, "excluded-namespace", f"namespace {namespace.name} is excluded from injection"
        )
    if constants.STATUS_ANNOTATION in annotations:
        return Decision(
            False,
            "already-injected",
            f"pod already has the {constants.STATUS_ANNOTATION} annotation",
        )
    namespace_label = namespace.labels.get(constants.NAMESPACE_INJECTION_LABEL)
    if namespace_label == constants.DISABLED:
        return Decision(
            False,
            "namespace-disabled",
            f"namespace {namespace.name} is labelled "
            f"{constants.NAMESPACE_INJECTION_LABEL}={constants.DISABLED}",
        )

    from_label = labels.get(constants.INJECT_KEY)
    pod_choice = from_label if from_label is not None else annotations.get(constants.INJECT_KEY)
    where = "label" if from_label is not None else "annotation"
    if pod_choice == "false":
        return Decision(False, "pod-opted-out", f"pod {where} {constants.INJECT_KEY}=false")
    if pod_choice == "true":
        return Decision(True, "pod-opted-in", f"pod {where} {constants.INJECT_KEY}=true")

    if namespace_label == constants.ENABLED:
        return Decision(
            True,
            "namespace-enabled",
            f"namespace {namespace.name} is labelled "
            f"{constants.NAMESPACE_INJECTION_LABEL}={constants.ENABLED}",
        )
    return Decision(
        False,
        "not-enabled",
        f"namespace {namespace.name} is not labelled "
        f"{constants.NAMESPACE_INJECTION_LABEL}={constants.ENABLED} "
        f"and the pod does not ask for injection",
    )
