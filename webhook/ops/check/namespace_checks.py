"""The checks of what the install serves: excluded namespaces, PodSecurity, dry-run pods,
locked settings, outdated sidecars.

Each is a function from the ``Context`` to an ``Outcome``, declared with
``@check``: its name, standing hint and the discovery steps it reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from webhook import __version__
from webhook.contract import constants
from webhook.engine.values import shorten
from webhook.manifests.revisions import selector_matches
from webhook.ops.check.context import Context
from webhook.ops.check.discover_install import INJECTOR, WEBHOOK
from webhook.ops.check.discover_pods import DRY_RUNS, NAMESPACES, PODS
from webhook.ops.check.discover_policy import POLICY
from webhook.ops.check.discover_revisions import REVISIONS
from webhook.ops.check.discover_templates import TEMPLATES
from webhook.ops.check.model import (
    Outcome,
    check,
    failed,
    outcome,
    passed,
    plural,
    skipped,
    warned,
)
from webhook.ops.outdated import Report

ENFORCE_LABEL: Final = "pod-security.kubernetes.io/enforce"


@check("excluded-namespaces", needs=[WEBHOOK, POLICY, INJECTOR, NAMESPACES])
def excluded_namespaces(context: Context) -> Outcome:
    """No webhook (or policy binding) selects kube-system, kube-public, kube-node-lease, the
    injector's own namespace or the config's exclusions (selectors evaluated against the
    real objects)."""
    webhooks = list(context.webhook.webhooks)
    if not webhooks and context.policy.exists:
        # Policy mode: the bindings' selectors decide which namespaces the policies see.
        webhooks = [
            {
                "name": f"binding {index + 1} of {context.options.configuration}",
                "namespaceSelector": s,
            }
            for index, s in enumerate(context.policy.selectors)
        ]
    if not webhooks:
        return skipped("no webhook configuration to evaluate")
    if context.namespaces.error:
        return warned(context.namespaces.error, "")
    leaks: list[str] = []
    details: list[str] = []
    for namespace in context.excluded:
        info = context.namespaces.by_name.get(namespace)
        if info is None:
            # What the API server would label it with on creation.
            labels: Mapping[str, str] = {"kubernetes.io/metadata.name": namespace}
            details.append(f"{namespace} does not exist; judged by its name label")
        else:
            labels = info.labels
        for hook in webhooks:
            if selector_matches(hook.get("namespaceSelector"), labels):
                note = (
                    " (its matchConditions were not evaluated)"
                    if hook.get("matchConditions")
                    else ""
                )
                leaks.append(f"webhook {hook.get('name')} selects {namespace}{note}")
    excluded = ", ".join(context.excluded)
    if leaks:
        return failed(
            f"{leaks[0]}: its pods call the injector, and with failurePolicy Fail an outage"
            " blocks them" + (f" (+{len(leaks) - 1} more)" if len(leaks) > 1 else ""),
            "every webhook's namespaceSelector needs kubernetes.io/metadata.name NotIn"
            f" [{excluded}] (manifests/base/mutatingwebhook.yaml)",
            details + leaks[1:],
        )
    return passed(f"no webhook selects {excluded}", details)


@check(
    "pod-security",
    hint=f"label it {ENFORCE_LABEL}=privileged, or opt it out"
    f" ({constants.NAMESPACE_INJECTION_LABEL}=disabled)",
    needs=[REVISIONS, NAMESPACES],
)
def pod_security(context: Context) -> Outcome:
    """No opted-in namespace (of any revision) enforces PodSecurity baseline or restricted."""
    if context.namespaces.error:
        return warned(context.namespaces.error, "")
    opted = context.meshed
    conflicts = [
        f"{info.name} enforces {info.labels[ENFORCE_LABEL]}"
        for info in opted
        if info.labels.get(ENFORCE_LABEL) in ("baseline", "restricted")
    ]
    if conflicts:
        return failed(
            f"{plural(len(conflicts), 'opted-in namespace')} enforce PodSecurity"
            f" baseline/restricted, which refuses mesh-init (NET_ADMIN, NET_RAW):"
            f" {', '.join(conflicts[:5])}" + (" ..." if len(conflicts) > 5 else ""),
            None,
            conflicts + context.partial_note,
            namespaces=[c.split(" ", 1)[0] for c in conflicts],
        )
    return passed(
        f"none of {plural(len(opted), 'opted-in namespace')} enforces PodSecurity"
        " baseline or restricted",
        context.partial_note,
    )


@check(
    "dry-run-injection",
    hint="see the other checks; kubectl create --dry-run=server -o yaml shows what the"
    " API server makes of a pod",
    needs=[REVISIONS, NAMESPACES, DRY_RUNS],
)
def dry_run_injection(context: Context) -> Outcome:
    """A server-side dry-run pod in each opted-in namespace comes back injected."""
    if context.namespaces.error:
        return warned(context.namespaces.error, "")
    opted = len(context.opted_in)
    wanted = context.options.namespace
    if wanted is not None and not opted:
        return skipped(
            f"namespace {wanted} is not opted in ({constants.NAMESPACE_INJECTION_LABEL}"
            f"={constants.ENABLED}) or does not exist"
        )
    runs = context.dry_runs
    if not opted:
        if not runs.opt_in_label:
            return skipped("no namespace is opted in, and there is no default")
        opted = 1
    failures = [f"{namespace}: {what}" for namespace, what in runs.outcomes if what]
    details = [f"{namespace}: injected" for namespace, what in runs.outcomes if not what]
    probed = len(runs.outcomes)
    scope = (
        "no namespace is opted in; a pod labelled sidecar.mesh.io/inject=true in default"
        if runs.opt_in_label
        else f"{probed} of {plural(opted, 'opted-in namespace')}"
    )
    deleted = sum(1 for i in context.opted_in if i.name in context.namespaces.terminating)
    if deleted:
        details.append(f"{plural(deleted, 'namespace')} being deleted, not tried")
    if opted - deleted > probed:
        details.append(
            f"{opted - deleted - probed} more not tried (--max-namespaces, or --namespace NS)"
        )
    details += context.partial_note
    if failures:
        return failed(
            f"a dry-run pod is not injected in {len(failures)} of {probed} namespaces:"
            f" {failures[0]}",
            None,
            details + failures[1:],
        )
    return passed(f"dry-run pods come back injected ({scope})", details)


@check(
    "locked-settings",
    hint="remove the annotation from each pod template listed (or set it to the value in force),"
    " or unlock the setting (lockedSettings in the injector config)",
    needs=[INJECTOR, NAMESPACES, TEMPLATES],
)
def locked_settings(context: Context) -> Outcome:
    """No workload that would be injected gives a locked setting another value in its template."""
    locked = sorted(context.injector.config.locked_settings)
    if not locked:
        return passed("no setting is locked (lockedSettings in the injector config)")
    if context.namespaces.error:
        return warned(context.namespaces.error, "")
    found = context.templates
    if found.error:
        return warned(found.error, "")
    details = [*found.problems, *context.partial_note]
    if found.stopped:
        details.append(f"scan incomplete: {found.stopped}")
    scope = f"locked: {', '.join(locked)}; {plural(found.scanned, 'pod template')} scanned"
    workloads = sorted({str(c) for c in found.conflicts})
    if found.conflicts:
        details += [
            f"{c}: {c.key}={shorten(c.value)}, locked to {shorten(c.in_force)} ({c.source})"
            for c in found.conflicts
        ]
        if found.more:
            details.append(f"{found.more} more not listed")
        return failed(
            f"{plural(len(workloads), 'workload')} set a locked setting to another value than"
            f" the one in force, so their new pods will be refused: {', '.join(workloads[:5])}"
            + (" ..." if len(workloads) > 5 else "")
            + f" ({scope})",
            None,
            details,
            workloads=[
                {
                    "namespace": c.namespace,
                    "kind": c.kind,
                    "name": c.name,
                    "key": c.key,
                    "value": c.value,
                    "inForce": c.in_force,
                    "source": c.source,
                }
                for c in found.conflicts
            ],
        )
    message = f"no workload changes a locked setting ({scope})"
    if found.stopped:
        return warned(message, "narrow it down with --namespace NS", details)
    if found.problems:
        return warned(message, "", details)
    return passed(message, details)


@check(
    "outdated-sidecars",
    hint="restart the workloads listed below to inject the current sidecar",
    needs=[DRY_RUNS, PODS],
)
def outdated_sidecars(context: Context) -> Outcome:
    """Pods whose sidecar another injector version or other settings injected."""
    reference = context.dry_runs.reference
    notes = []
    if reference.note:
        notes.append(reference.note)
    elif reference.digests_confirmed is None:
        notes.append(
            f"the running injector's version is assumed to be {__version__} (no dry-run"
            " pod came back injected)"
        )
    if context.pods.error:
        return warned(context.pods.error, "", notes)
    return _outdated(context.pods.report, notes)


def _outdated(report: Report, notes: list[str]) -> Outcome:
    details = list(notes)
    if report.unreadable:
        details.append(f"{plural(report.unreadable, 'pod')} with an unreadable status annotation")
    if report.not_injected_now:
        details.append(
            f"{plural(report.not_injected_now, 'injected pod')} would not be injected now"
            " (namespace opted out, or settings refused)"
        )
    scope = f"{plural(report.injected, 'injected pod')} of {report.scanned} scanned"
    if not report.complete:
        details.append(f"scan incomplete: {report.stopped_because}")
    workloads = []
    for workload, entry in sorted(report.outdated.items()):
        reason = entry.reasons.most_common(1)[0][0]
        details.append(
            f"{workload.namespace}: {workload.kind.lower()}/{workload.name}"
            f" ({plural(entry.pods, 'pod')}, {reason}): {workload.restart()}"
        )
        workloads.append(
            {
                "namespace": workload.namespace,
                "kind": workload.kind,
                "name": workload.name,
                "pods": entry.pods,
                "examples": list(entry.sample),
                "reasons": dict(entry.reasons),
                "restart": workload.restart(),
            }
        )
    counts = report.per_namespace()
    data = {
        "scanned": report.scanned,
        "injected": report.injected,
        "outdated": report.outdated_pods,
        "namespaces": dict(sorted(counts.items())),
        "workloads": workloads,
        "complete": report.complete,
    }
    if report.outdated:
        per_ns = ", ".join(f"{ns}: {n}" for ns, n in sorted(counts.items()))
        return warned(
            f"{plural(report.outdated_pods, 'pod')} run an outdated sidecar ({per_ns}); {scope}",
            None,
            details,
            **data,
        )
    if report.complete:
        return passed(f"no outdated sidecar ({scope})", details, **data)
    return outcome(
        "warn",
        f"no outdated sidecar ({scope})",
        "narrow it down with --namespace NS",
        details,
        **data,
    )
