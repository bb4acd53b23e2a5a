"""Why a pod or a workload is (not) injected: the engine's answer, and what surrounds it.

Pure: the object, its namespace, the install and the pods come in as read
(``read``); the answer comes from ``webhook.engine.inject``, the engine
``/mutate`` runs, on the pod or the pod template with the namespace's labels
and annotations. Around it:

- whether the API server calls the injector at all: the webhook
  configuration's namespace and object selectors, evaluated as the API
  server evaluates them (a pod they leave out is never injected, whatever
  the engine would say; ``matchConditions`` are CEL and only noted);
- each setting's value and where it comes from, with the config's locks;
- which revision serves the pod (:func:`serving_revision`);
- the running pods: which have no sidecar, which an outdated one
  (``webhook.ops.outdated``), and the command that replaces them.

A running pod that was injected is explained as it was submitted: what the
status annotation says was added is taken out first (``uninject``), so the
answer is about a pod created now, not "already injected".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from webhook.contract import constants
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine import InjectionRefused, InjectionResult, inject, uninject
from webhook.engine.settings import SettingsError, resolve_settings
from webhook.engine.status import MAX_STATUS_CHARS
from webhook.engine.workloads import ObjectError, locate_pod, pod_parts
from webhook.manifests.patched import patched
from webhook.manifests.revisions import (
    POD_OPTED_IN,
    match_conditions,
    pod_conditions_hold,
    selector_matches,
)
from webhook.ops.outdated import (
    Expected,
    StatusUnreadable,
    Workload,
    expected,
    owning_workload,
    recorded,
    staleness,
)
from webhook.ops.why.read import Install, Pods
from webhook.ops.why.target import POD, Target

REVISION_LABEL: Final = constants.PREFIX + "rev"
DEFAULT_REVISION: Final = "default"
# Pod names shown per list (the rest are counted).
SAMPLE_PODS: Final = 5
CODE_REFUSED: Final = "refused"
CODE_NOT_SELECTED: Final = "not-selected"


@dataclass(frozen=True)
class Setting:
    """One setting in force: its value, where it comes from, whether the config locks it."""

    key: str
    value: str
    source: str
    locked: bool = False


@dataclass(frozen=True)
class Verdict:
    """Would a pod created now get the sidecar, the decision's code, and why."""

    injected: bool
    code: str
    reason: str


@dataclass(frozen=True)
class WebhookCall:
    """Whether the API server would call the injector for the pod, by the install's selectors."""

    configuration: str
    known: bool  # the webhook configuration was read
    called_by: tuple[str, ...] = ()  # the webhooks whose selectors match
    left_out: tuple[str, ...] = ()  # why each other webhook does not match
    match_conditions: int = 0  # CEL conditions of the called webhooks not evaluated here


@dataclass(frozen=True)
class Revision:
    """The revision that serves the pod, and those recorded by its running pods' injections."""

    name: str
    source: str
    recorded: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodReport:
    """The running pods: with and without the sidecar, outdated ones, and the fix."""

    examined: int = 0
    injected: int = 0
    without: tuple[str, ...] = ()
    without_count: int = 0
    outdated: tuple[tuple[str, str], ...] = ()
    outdated_count: int = 0
    unreadable: int = 0
    complete: bool = True
    note: str = ""
    fix: str | None = None


@dataclass(frozen=True)
class Explanation:
    """Everything ``why`` says about one object."""

    target: Target
    verdict: Verdict
    webhook: WebhookCall
    revision: Revision
    config_source: str
    settings: tuple[Setting, ...]
    settings_note: str
    pods: PodReport
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def explain(
    target: Target,
    obj: dict[str, Any],
    *,
    namespace: NamespaceInfo,
    install: Install,
    pods: Pods,
    owner_of: Callable[[str, str, str], tuple[str, str] | None],
    version: str,
) -> Explanation:
    """The whole answer for ``obj`` (the object read), in ``namespace``, served by ``install``.

    ``owner_of`` finds a ReplicaSet's or Job's controller (for the fix);
    ``version`` is this build's: outdated sidecars are judged against the
    running injector's version (``install.version``), and by container
    digest only when the two agree (this engine makes that injector's
    containers).
    """
    submitted = _as_submitted(obj)
    meta, spec = _pod_parts(submitted)
    labels = _strings(meta.get("labels"))
    annotations = _strings(meta.get("annotations"))
    config = install.config
    result: InjectionResult | None = None
    refusal = None
    try:
        result = inject(submitted, namespace=namespace, config=config)
    except InjectionRefused as err:
        refusal = str(err)
    call = webhook_call(install, namespace.labels, labels, {"metadata": meta, "spec": spec})
    verdict = _verdict(result, refusal, call)
    settings, settings_note = _settings(result, namespace, annotations, install)
    workload = _workload(target, obj, owner_of)
    report = pod_report(
        pods,
        namespace=namespace,
        install=install,
        version=version,
        fix=workload.restart(),
        would_inject=verdict.injected,
    )
    return Explanation(
        target=target,
        verdict=verdict,
        webhook=call,
        revision=serving_revision(labels, namespace.labels, pods.items),
        config_source=install.config_source,
        settings=settings,
        settings_note=settings_note,
        pods=report,
        warnings=result.warnings if result is not None else (),
        notes=install.notes,
    )


# --- the decision -------------------------------------------------------------------------


def _as_submitted(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as it was before injection (what the status annotation records, removed)."""
    try:
        undone = uninject(obj)
    except InjectionRefused:
        return obj  # an annotation that is not ours: the engine explains it as it stands
    return patched(undone) if undone.removed else obj


def _pod_parts(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        location = locate_pod(obj)
        if location is None:
            return {}, {}
        return pod_parts(obj, location)
    except ObjectError:
        return {}, {}


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _verdict(result: InjectionResult | None, refusal: str | None, call: WebhookCall) -> Verdict:
    skipped = result is not None and not result.injected
    if call.known and not call.called_by and not skipped:
        # The engine would inject (or refuse), but the API server never asks it.
        reason = f"no webhook of {call.configuration} is called for it: " + "; ".join(call.left_out)
        return Verdict(False, CODE_NOT_SELECTED, reason)
    if refusal is not None:
        return Verdict(False, CODE_REFUSED, f"refused: {refusal}")
    if result is None:  # pragma: no cover - inject either returns or refuses
        raise RuntimeError("no injection result")
    return Verdict(result.injected, result.decision.code, result.decision.reason)


def webhook_call(
    install: Install,
    namespace_labels: Mapping[str, str],
    pod_labels: Mapping[str, str],
    pod: Mapping[str, Any] | None = None,
) -> WebhookCall:
    """Which webhooks of the install the API server would call for a pod with these labels.

    A webhook's ``matchConditions`` are evaluated when they are the install's
    own (``webhook.manifests.revisions``: what the pod itself says, and the
    object webhook's opt-in), by their Python twins on ``pod``; any others
    are only counted.
    """
    if not install.found:
        return WebhookCall(install.configuration, known=False)
    called: list[str] = []
    left_out: list[str] = []
    conditions = 0
    for hook in install.webhooks:
        name = str(hook.get("name"))
        own = hook.get("matchConditions") or []
        entry = next((e for e in (POD_OPTED_IN, "") if own == match_conditions(e)), None)
        if not selector_matches(hook.get("namespaceSelector"), namespace_labels):
            left_out.append(f"{name}'s namespaceSelector does not match the namespace's labels")
        elif not selector_matches(hook.get("objectSelector"), pod_labels):
            left_out.append(f"{name}'s objectSelector does not match the pod's labels")
        elif own and entry is None:
            conditions += len(own)
            called.append(name)
        elif own and pod is not None and not pod_conditions_hold(pod, entry or ""):
            left_out.append(f"{name}'s matchConditions leave the pod out (what it says itself)")
        else:
            called.append(name)
    if not install.webhooks:
        left_out.append("the configuration has no webhooks")
    return WebhookCall(
        install.configuration, True, tuple(called), tuple(left_out), match_conditions=conditions
    )


# --- settings -----------------------------------------------------------------------------


def _settings(
    result: InjectionResult | None,
    namespace: NamespaceInfo,
    pod_annotations: Mapping[str, str],
    install: Install,
) -> tuple[tuple[Setting, ...], str]:
    """The settings in force, and a note when they do not apply or cannot be resolved."""
    settings = result.settings if result is not None else None
    note = ""
    if settings is None:
        # Not injected: show what a pod would get if it were (the same precedence).
        note = "what an injected pod would get; this one is not injected"
        try:
            settings = resolve_settings(
                install.config,
                namespace_labels=namespace.labels,
                namespace_annotations=namespace.annotations,
                pod_annotations=pod_annotations,
            )
        except SettingsError as err:
            return (), f"cannot be resolved: {err}"
    shown = tuple(
        Setting(key, item.value, str(item.source), item.locked)
        for key, item in settings.provenance.items()
    )
    return shown, note


# --- revisions ----------------------------------------------------------------------------


def serving_revision(
    pod_labels: Mapping[str, str],
    namespace_labels: Mapping[str, str],
    running: Sequence[Mapping[str, Any]] = (),
) -> Revision:
    """The revision that serves a pod with these labels: the contract's rule, unresolved.

    A pod label ``sidecar.mesh.io/rev`` wins over the namespace's; neither
    means the revision-less install, ``default``. This is the seam for
    revisions and tags: once they are installed, the name found here is
    resolved (a tag to its revision) and that revision's own install
    (webhook configuration, config) is read in place of the default one.
    ``recorded`` is what the running pods' status annotations say served them.
    """
    recorded_names = tuple(
        sorted(
            {name for pod in running if (name := recorded_revision(_annotations(pod))) is not None}
        )
    )
    if REVISION_LABEL in pod_labels:
        return Revision(pod_labels[REVISION_LABEL], f"pod label {REVISION_LABEL}", recorded_names)
    if REVISION_LABEL in namespace_labels:
        name = namespace_labels[REVISION_LABEL]
        return Revision(name, f"namespace label {REVISION_LABEL}", recorded_names)
    return Revision(DEFAULT_REVISION, f"no {REVISION_LABEL} label", recorded_names)


def recorded_revision(annotations: Mapping[str, Any]) -> str | None:
    """The revision a status annotation records (``revision``), if it records one."""
    raw = annotations.get(constants.STATUS_ANNOTATION)
    if not isinstance(raw, str) or len(raw) > MAX_STATUS_CHARS:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    revision = value.get("revision") if isinstance(value, dict) else None
    return revision if isinstance(revision, str) and revision else None


# --- the running pods ---------------------------------------------------------------------


def pod_report(
    pods: Pods,
    *,
    namespace: NamespaceInfo,
    install: Install,
    version: str,
    fix: str,
    would_inject: bool,
) -> PodReport:
    """Count the pods: with the sidecar (outdated or not), without it; the fix when needed.

    Sidecars are judged as ``check`` judges them: injected by another
    version, or with other containers than the engine makes now.
    """
    injected = unreadable = 0
    without: list[str] = []
    outdated: list[tuple[str, str]] = []
    expectations: dict[tuple[tuple[str, str], ...], Expected] = {}
    # Digests are this engine's: they say what the running injector makes only
    # when it is this version.
    digests = version == install.version
    for pod in pods.items:
        annotations = _annotations(pod)
        name = str((pod.get("metadata") or {}).get("name") or "")
        try:
            found = recorded(annotations)
        except StatusUnreadable:
            unreadable += 1
            continue
        if found is None:
            without.append(name)
            continue
        injected += 1
        key = tuple(
            sorted(
                (k, v)
                for k, v in annotations.items()
                if k.startswith(constants.PREFIX) and isinstance(v, str)
            )
        )
        now = expectations.get(key)
        if now is None:
            now = expectations[key] = expected(namespace, dict(key), install.config)
        stale = staleness(found, now, version=install.version, digests=digests)
        if stale is not None:
            outdated.append((name, stale))
    needs_fix = bool(outdated) or (would_inject and bool(without))
    return PodReport(
        examined=len(pods.items),
        injected=injected,
        without=tuple(without[:SAMPLE_PODS]),
        without_count=len(without),
        outdated=tuple(outdated[:SAMPLE_PODS]),
        outdated_count=len(outdated),
        unreadable=unreadable,
        complete=pods.complete,
        note=pods.note,
        fix=fix if needs_fix else None,
    )


def _annotations(pod: Mapping[str, Any]) -> dict[str, Any]:
    annotations = (pod.get("metadata") or {}).get("annotations")
    return annotations if isinstance(annotations, dict) else {}


def _workload(
    target: Target,
    obj: Mapping[str, Any],
    owner_of: Callable[[str, str, str], tuple[str, str] | None],
) -> Workload:
    """What to restart for new pods: the workload itself, or what controls it."""
    if target.kind is POD:
        return owning_workload(obj, owner_of)
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller") is True:
            kind, name = ref.get("kind"), ref.get("name")
            if kind in ("Deployment", "CronJob") and isinstance(name, str):
                return Workload(target.namespace, kind, name)
    return Workload(target.namespace, target.kind.kind, target.name)
