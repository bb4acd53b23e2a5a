"""Whether a pod gets the sidecar, decided before anything is built.

The order is the contract's, first match wins. Every outcome carries a stable
``code`` (a metrics label, never reworded) and a ``reason`` for humans (logs,
previews, refusals). Nothing here allocates beyond the Decision itself: this
runs for every pod in every opted-in namespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from webhook.contract import constants
from webhook.engine.config import InjectorConfig
from webhook.engine.values import shorten

# Pod Security admission (built into the apiserver) reads these namespace labels.
POD_SECURITY_ENFORCE: Final = "pod-security.kubernetes.io/enforce"
POD_SECURITY_ENFORCE_VERSION: Final = "pod-security.kubernetes.io/enforce-version"


class NamespaceLike(Protocol):
    """What the engine needs to know about a namespace (``NamespaceInfo`` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def annotations(self) -> Mapping[str, str]: ...


# Outcomes that do not depend on the namespace's labels or annotations (its
# name can count: excluded-namespace): with any labels the pod would not be
# injected either. Admission gives them without reading a namespace it has
# not cached, so they hold even while the API server is unreachable.
LABEL_FREE_SKIPS: Final = frozenset(
    {
        "host-network",
        "windows-pod",
        "mirror-pod",
        "excluded-namespace",
        "already-injected",
        "pod-opted-out",
    }
)
# Skips decided by the namespace's labels: a stale copy of them would leave a
# pod unmeshed, so admission reads the namespace again before giving them.
LABEL_SKIPS: Final = frozenset({"namespace-disabled", "not-enabled"})


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
    pod_os = spec.get("os")
    if isinstance(pod_os, Mapping) and pod_os.get("name") == "windows":
        return Decision(
            False,
            "windows-pod",
            "pod runs on Windows (spec.os.name: windows): netfilter rules and "
            "Envoy's Linux settings do not apply there",
        )
    if constants.MIRROR_POD_ANNOTATION in annotations:
        return Decision(False, "mirror-pod", "static (mirror) pods are managed by the kubelet")
    if namespace.name in config.excluded_namespaces:
        return Decision(
            False, "excluded-namespace", f"namespace {namespace.name} is excluded from injection"
        )
    if constants.STATUS_ANNOTATION in annotations and _injected_containers_present(spec):
        return Decision(
            False,
            "already-injected",
            f"pod already has the {constants.STATUS_ANNOTATION} annotation "
            f"and the containers it lists",
        )
    namespace_label = namespace.labels.get(constants.NAMESPACE_INJECTION_LABEL)
    if namespace_label == constants.DISABLED:
        return Decision(
            False,
            "namespace-disabled",
            f"namespace {namespace.name} is labelled "
            f"{constants.NAMESPACE_INJECTION_LABEL}={constants.DISABLED}",
        )

    # The label wins over the annotation, but only with a value that means
    # something: an invalid one is ignored (inject() warns) and the other decides.
    from_label = labels.get(constants.INJECT_KEY)
    from_annotation = annotations.get(constants.INJECT_KEY)
    pod_choice: str | None
    if from_label in _CHOICES:
        pod_choice, where = from_label, "label"
    else:
        pod_choice, where = from_annotation, "annotation"
    if pod_choice in _CHOICES:
        ignored = (
            f" (the label's value {from_label!r} is ignored)"
            if from_label is not None and where == "annotation"
            else ""
        )
        if len(ignored) > 80:
            ignored = " (the label's invalid value is ignored)"
        if pod_choice == "false":
            return Decision(
                False, "pod-opted-out", f"pod {where} {constants.INJECT_KEY}=false{ignored}"
            )
        return Decision(True, "pod-opted-in", f"pod {where} {constants.INJECT_KEY}=true{ignored}")

    return _opted_in(labels, namespace)


def _opted_in(labels: Mapping[str, str], namespace: NamespaceLike) -> Decision:
    """Step 8: a ``rev`` label (the pod's, else the namespace's), then ``enabled``.

    A rev label opts in as well as choosing the revision, and wins over
    sidecar-injection=enabled: the install's selectors send the pod to that
    revision's injector (docs/upgrade.md), whose config is the one deciding.
    """
    pod_revision = labels.get(constants.REVISION_LABEL)
    if pod_revision is not None:
        return Decision(
            True,
            "pod-revision",
            f"pod label {constants.REVISION_LABEL}={shorten(pod_revision, 63, quote=False)} "
            f"picks an injector revision",
        )
    namespace_revision = namespace.labels.get(constants.REVISION_LABEL)
    if namespace_revision is not None:
        return Decision(
            True,
            "namespace-revision",
            f"namespace {namespace.name} is labelled "
            f"{constants.REVISION_LABEL}={shorten(namespace_revision, 63, quote=False)}",
        )
    if namespace.labels.get(constants.NAMESPACE_INJECTION_LABEL) == constants.ENABLED:
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


_CHOICES: Final = ("true", "false")


def _injected_containers_present(spec: Mapping[str, Any]) -> bool:
    """Whether ``mesh-init`` and ``mesh-proxy`` are both among the pod's containers.

    With the status annotation, that is "already injected" (the contract's
    step 5). The annotation's content is not read: the policy mode decides
    this in CEL, which cannot parse JSON, and both modes must decide alike.
    Copied metadata (a pod built from another pod's YAML, a template edited
    by hand) can carry the annotation without the containers; such a pod is
    injected again. In either list, by name: the spec is the client's, its
    lists may be anything, and only string names count.
    """
    names = _names(spec.get("initContainers")) | _names(spec.get("containers"))
    return names >= constants.INJECTED_NAMES


def _names(items: Any) -> set[str]:
    """The string names in a spec list (of anything, or not a list at all)."""
    if not isinstance(items, list):
        return set()
    return {
        name
        for item in items
        if isinstance(item, Mapping) and isinstance(name := item.get("name"), str)
    }


def pod_security_refusal(namespace: NamespaceLike) -> str | None:
    """Why a pod injected into ``namespace`` would be rejected by Pod Security, or None.

    ``mesh-init`` adds the NET_ADMIN and NET_RAW capabilities (and runs as
    root), which the ``baseline`` and ``restricted`` levels forbid in every
    policy version, so ``enforce-version`` does not change the answer; it is
    named in the message when set. A level Pod Security cannot parse is
    enforced as ``restricted`` by the apiserver, and so refused here too.
    ``privileged``, or no enforce label (the cluster's default applies, which
    the injector cannot see and is ``privileged`` unless configured), passes.
    Exemptions in the apiserver's admission configuration are not visible here.
    """
    level = namespace.labels.get(POD_SECURITY_ENFORCE)
    if level is None or level == "privileged":
        return None
    version = namespace.labels.get(POD_SECURITY_ENFORCE_VERSION)
    if level in ("baseline", "restricted"):
        enforced = f"Pod Security level {level!r}"
    else:
        enforced = (
            f"Pod Security level 'restricted' (its label value {shorten(level, 63)} is not a level)"
        )
    if version is not None:
        enforced += f" (version {shorten(version, 63)})"
    return (
        f"namespace {namespace.name} enforces {enforced}, which forbids the NET_ADMIN and "
        f"NET_RAW capabilities mesh-init needs to redirect the pod's traffic; label the "
        f"namespace {POD_SECURITY_ENFORCE}=privileged to mesh it, or opt the pod out with "
        f"{constants.INJECT_KEY}=false"
    )
