"""Which injector revision sees a pod: the selectors every revision's install carries.

Each revision is a complete install whose objects carry the revision as a
suffix (``sidecar-injector-canary``; the revision-less install is ``default``
and keeps the plain names). Its webhook configuration (or, in policy mode,
its bindings) has these disjoint entries, so that for any mix of installed
revisions the API server hands each pod to exactly one injector:

(a) ``rev-pod``: the pod's ``sidecar.mesh.io/rev`` label is one of this
    revision's values (its name and its tags);
(b) ``rev-namespace``: the pod has no ``rev`` label and its namespace's
    ``rev`` label is one of this revision's values;
(c) the default revision only, no ``rev`` label on the pod or the namespace:
    ``namespace`` when the namespace is ``sidecar-injection=enabled``,
    ``object`` when it is neither enabled nor disabled and the pod opts in by
    label or annotation (a ``matchCondition``: selectors cannot see
    annotations).

Every entry leaves out the excluded namespaces and those labelled
``sidecar-injection=disabled``, and its ``matchConditions`` leave out the
pods the injector would skip for what the pod itself says (host network,
Windows, mirror pod, opted out, already injected): the API server does not
call an injector for them. A revision's values are the only thing a tag
changes: ``sidecar-injector tag`` adds a value to one revision's ``In``
expressions and takes it from another's.

Pure: the entries are plain dicts, as the manifests and the API server
write them; :func:`sees` evaluates them as the API server does (the
``matchConditions`` by their Python twins, :func:`pod_conditions_hold`),
which ``check`` and ``why`` use to say which revision serves a pod.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from webhook.contract import constants

NAME: Final = "sidecar-injector"
REVISION_LABEL: Final = constants.REVISION_LABEL
DEFAULT_REVISION: Final = constants.DEFAULT_REVISION
NAME_LABEL: Final = "kubernetes.io/metadata.name"
WEBHOOK_DOMAIN: Final = "sidecar.mesh.io"
# The entries' short names, as they begin each webhook's name.
POD_REVISION: Final = "rev-pod"
NAMESPACE_REVISION: Final = "rev-namespace"
NAMESPACE_ENABLED: Final = "namespace"
POD_OPTED_IN: Final = "object"

_INJECT = constants.INJECT_KEY
_INJECTION = constants.NAMESPACE_INJECTION_LABEL


def object_name(revision: str, base: str = NAME) -> str:
    """The name of one of ``revision``'s objects: ``base``, with the revision as a suffix."""
    return base if revision == DEFAULT_REVISION else f"{base}-{revision}"


def webhook_name(entry: str, revision: str) -> str:
    """A webhook's name in ``revision``'s configuration (``rev-pod.canary.sidecar.mesh.io``)."""
    if revision == DEFAULT_REVISION:
        return f"{entry}.{WEBHOOK_DOMAIN}"
    return f"{entry}.{revision}.{WEBHOOK_DOMAIN}"


# --- the pod's own say: matchConditions --------------------------------------------------

# The CEL reaches every field through optionals (``.?``, ``[?]``, since 1.28),
# so that a missing one is a value and never an error: an expression that errs
# would refuse the pod (failurePolicy Fail).
_LABEL: Final = f"object.metadata.?labels[?'{_INJECT}'].orValue('')"
_ANNOTATION: Final = f"object.metadata.?annotations[?'{_INJECT}'].orValue('')"
_ANNOTATIONS: Final = "object.metadata.?annotations.orValue({})"
_INJECTED_NAMES: Final = sorted(constants.INJECTED_NAMES)

# The label wins over the annotation, but only with a value that means
# something (the engine's decide, step 7): the pod opts out when its label
# says false, or its label says neither true nor false and its annotation false.
POD_CONDITIONS: Final[tuple[Mapping[str, str], ...]] = (
    {"name": "not-host-network", "expression": "!object.spec.?hostNetwork.orValue(false)"},
    {"name": "not-windows", "expression": "object.spec.?os.?name.orValue('') != 'windows'"},
    {
        "name": "not-mirror-pod",
        "expression": f"!('{constants.MIRROR_POD_ANNOTATION}' in {_ANNOTATIONS})",
    },
    {
        "name": "not-opted-out",
        "expression": f"!({_LABEL} == 'false' || {_LABEL} != 'true' && {_ANNOTATION} == 'false')",
    },
    {
        "name": "not-injected",
        "expression": f"!('{constants.STATUS_ANNOTATION}' in {_ANNOTATIONS}"
        f" && {_INJECTED_NAMES}.all(n,"
        " object.spec.?initContainers.orValue([]).exists(c, c.name == n)"
        " || object.spec.containers.exists(c, c.name == n)))",
    },
)
OPTED_IN_CONDITION: Final[Mapping[str, str]] = {
    "name": "opted-in",
    "expression": f"{_LABEL} == 'true' || {_LABEL} != 'false' && {_ANNOTATION} == 'true'",
}


def match_conditions(entry: str) -> list[dict[str, str]]:
    """The ``matchConditions`` of an entry: the pod's skips, and for ``object`` its opt-in."""
    conditions = [dict(c) for c in POD_CONDITIONS]
    if entry == POD_OPTED_IN:
        conditions.append(dict(OPTED_IN_CONDITION))
    return conditions


def _choice(meta: Mapping[str, Any]) -> str:
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    label = labels.get(_INJECT, "")
    return str(label if label in ("true", "false") else annotations.get(_INJECT, ""))


def _names(spec: Mapping[str, Any], field: str) -> set[str]:
    items = spec.get(field) or []
    return {str(c.get("name")) for c in items if isinstance(c, Mapping)}


def pod_conditions_hold(pod: Mapping[str, Any], entry: str) -> bool:
    """Whether an entry's ``matchConditions`` hold for ``pod``: :data:`POD_CONDITIONS` in Python.

    Held to the CEL by the e2e tests, where the API server evaluates them.
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations = meta.get("annotations") or {}
    os_name = (spec.get("os") or {}).get("name")
    injected = (
        constants.STATUS_ANNOTATION in annotations
        and (_names(spec, "initContainers") | _names(spec, "containers"))
        >= constants.INJECTED_NAMES
    )
    holds = (
        spec.get("hostNetwork") is not True
        and os_name != "windows"
        and constants.MIRROR_POD_ANNOTATION not in annotations
        and _choice(meta) != "false"
        and not injected
    )
    if entry == POD_OPTED_IN:
        holds = holds and _choice(meta) == "true"
    return holds


# --- the entries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One disjoint entry: a webhook in webhook mode, a binding in policy mode."""

    entry: str  # POD_REVISION, NAMESPACE_REVISION, NAMESPACE_ENABLED or POD_OPTED_IN
    namespace_selector: Mapping[str, Any]
    object_selector: Mapping[str, Any]

    @property
    def conditions(self) -> list[dict[str, str]]:
        """Its ``matchConditions`` (the webhook's; in policy mode the policy decides)."""
        return match_conditions(self.entry)


def _expression(key: str, operator: str, values: Sequence[str] = ()) -> dict[str, Any]:
    found: dict[str, Any] = {"key": key, "operator": operator}
    if operator in ("In", "NotIn"):
        found["values"] = list(values)
    return found


def entries(revision: str, values: Iterable[str], excluded: Sequence[str]) -> list[Entry]:
    """``revision``'s entries: (c) first for the default revision, then (a) and (b).

    ``values`` are the ``rev`` values the revision answers to besides its own
    name (its tags; ``default`` is added for the default revision).
    """
    answers = [revision, *(v for v in values if v != revision)]
    not_excluded = _expression(NAME_LABEL, "NotIn", excluded)
    not_disabled = _expression(_INJECTION, "NotIn", [constants.DISABLED])
    not_opted_out = _expression(_INJECT, "NotIn", ["false"])
    no_pod_revision = _expression(REVISION_LABEL, "DoesNotExist")
    found = []
    if revision == DEFAULT_REVISION:
        found += [
            Entry(
                NAMESPACE_ENABLED,
                {
                    "matchExpressions": [
                        _expression(_INJECTION, "In", [constants.ENABLED]),
                        _expression(REVISION_LABEL, "DoesNotExist"),
                        not_excluded,
                    ]
                },
                {"matchExpressions": [not_opted_out, no_pod_revision]},
            ),
            Entry(
                POD_OPTED_IN,
                {
                    "matchExpressions": [
                        # NotIn also holds without the label: any other value
                        # has no say, and the pod's own opt-in decides.
                        _expression(_INJECTION, "NotIn", [constants.ENABLED, constants.DISABLED]),
                        _expression(REVISION_LABEL, "DoesNotExist"),
                        not_excluded,
                    ]
                },
                {"matchExpressions": [not_opted_out, no_pod_revision]},
            ),
        ]
    found += [
        Entry(
            POD_REVISION,
            {"matchExpressions": [not_disabled, not_excluded]},
            {"matchExpressions": [not_opted_out, _expression(REVISION_LABEL, "In", answers)]},
        ),
        Entry(
            NAMESPACE_REVISION,
            {
                "matchExpressions": [
                    not_disabled,
                    _expression(REVISION_LABEL, "In", answers),
                    not_excluded,
                ]
            },
            {"matchExpressions": [not_opted_out, no_pod_revision]},
        ),
    ]
    return found


# --- evaluating them ------------------------------------------------------------------------


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a Kubernetes LabelSelector selects an object with ``labels``.

    As the API server evaluates it: a missing or empty selector selects
    everything; ``NotIn`` and ``DoesNotExist`` hold for a missing key; an
    unknown operator selects nothing (the API server would have refused it).
    """
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key = expression.get("key", "")
        values = expression.get("values") or []
        operator = expression.get("operator")
        present = key in labels
        if operator == "In":
            ok = present and labels[key] in values
        elif operator == "NotIn":
            ok = not present or labels[key] not in values
        elif operator == "Exists":
            ok = present
        elif operator == "DoesNotExist":
            ok = not present
        else:
            ok = False
        if not ok:
            return False
    return True


def sees(entry: Entry, pod: Mapping[str, Any], namespace_labels: Mapping[str, str]) -> bool:
    """Whether the API server hands ``pod`` (as created) to this entry."""
    pod_labels = (pod.get("metadata") or {}).get("labels") or {}
    return (
        selector_matches(entry.namespace_selector, namespace_labels)
        and selector_matches(entry.object_selector, pod_labels)
        and pod_conditions_hold(pod, entry.entry)
    )


def picked(pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str]) -> str | None:
    """The ``rev`` value that picks a pod's revision: the pod's label, else its namespace's.

    ``None``: neither has one, and the default revision serves the pod if
    anything does (sidecar-injection=enabled, or the pod's own opt-in).
    """
    found = pod_labels.get(REVISION_LABEL)
    return found if found is not None else namespace_labels.get(REVISION_LABEL)


# --- a revision's values, as its selectors hold them ----------------------------------------


def revision_values(selector: Mapping[str, Any] | None) -> list[str] | None:
    """The values of a selector's ``rev In`` expression; ``None`` when it has none."""
    for expression in (selector or {}).get("matchExpressions") or []:
        if expression.get("key") == REVISION_LABEL and expression.get("operator") == "In":
            return [str(v) for v in expression.get("values") or []]
    return None


def with_values(selector: Mapping[str, Any], values: Sequence[str]) -> dict[str, Any]:
    """``selector`` with its ``rev In`` expression holding ``values`` instead."""
    expressions = []
    for expression in selector.get("matchExpressions") or []:
        if expression.get("key") == REVISION_LABEL and expression.get("operator") == "In":
            expressions.append({**expression, "values": list(values)})
        else:
            expressions.append(expression)
    return {**selector, "matchExpressions": expressions}
