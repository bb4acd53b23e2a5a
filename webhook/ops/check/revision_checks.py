"""The revision checks: what is installed, labels that pick nothing, sidecars per revision.

Each is a function from the ``Context`` to an ``Outcome``, declared with
``@check``: its name, standing hint and the discovery steps it reads.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from webhook.contract import constants
from webhook.ops.check.context import Context
from webhook.ops.check.discover_pods import NAMESPACES, PODS
from webhook.ops.check.discover_revisions import REVISIONS
from webhook.ops.check.model import Outcome, check, failed, passed, plural, skipped, warned

# Namespaces named per revision in a detail line (the rest are counted).
SHOWN: Final = 5
NONE_INSTALLED: Final = (
    "no revision is installed (no webhook configuration or policy binding is labelled"
    f" {constants.REVISION_LABEL})"
)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else "") or "none"


def _namespaces_by_revision(context: Context) -> dict[str, list[str]]:
    """The namespaces each installed revision serves, by their labels."""
    found: dict[str, list[str]] = {}
    for info in context.meshed:
        value = info.labels.get(constants.REVISION_LABEL)
        serving = context.revisions.serving(value)
        if serving is not None:
            found.setdefault(serving, []).append(info.name)
    return found


@check(
    "revisions",
    hint="a rev value must be answered by one revision only: remove the tag from one of them"
    " (sidecar-injector tag remove), or uninstall the revision a tag shadows",
    needs=[REVISIONS, NAMESPACES, PODS],
)
def revisions(context: Context) -> Outcome:
    """The installed revisions and their tags, the namespaces each serves and the pods each
    injected; fails when two revisions answer to one value (both would inject its pods)."""
    found = context.revisions
    if found.error:
        return warned(found.error, "")
    if not found.installed.revisions:
        return skipped(NONE_INSTALLED)
    served = _namespaces_by_revision(context)
    pods = context.pods.report.by_revision
    details: list[str] = []
    listing = []
    for name, revision in sorted(found.installed.revisions.items()):
        config = found.configs.get(name)
        proxy = f"proxy {config.proxy.version}" if config is not None else "config not read"
        namespaces = sorted(served.get(name, []))
        details.append(
            f"{name} ({revision.mode}, {proxy}): tags {_listed(revision.tags)};"
            f" namespaces {_listed(namespaces)};"
            f" {plural(pods.get(name, 0), 'pod')} with its sidecar"
        )
        listing.append(
            {
                "name": name,
                "mode": revision.mode,
                "tags": revision.tags,
                "proxyVersion": config.proxy.version if config is not None else None,
                "namespaces": namespaces,
                "pods": pods.get(name, 0),
            }
        )
    others = sorted(set(pods) - set(found.installed.revisions))
    details += [
        f"{plural(pods[n], 'pod')} with a sidecar of revision {n}, not installed" for n in others
    ]
    details += list(found.notes) + [
        f"labelled, but not a revision name: {u}" for u in found.installed.unnamed
    ]
    names = ", ".join(sorted(found.installed.revisions))
    shared = {tag: owners for tag, owners in found.installed.tags().items() if len(owners) > 1}
    shadowed = [tag for tag in found.installed.tags() if tag in found.installed.revisions]
    if shared or shadowed:
        problems = [
            f"{tag} is answered by revisions {' and '.join(o)}" for tag, o in shared.items()
        ]
        problems += [f"{tag} is a revision and a tag of another" for tag in shadowed]
        return failed(
            f"{problems[0]}: pods it picks are seen by two injectors"
            + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
            None,
            details + problems[1:],
            revisions=listing,
        )
    tags = ", ".join(f"{tag} -> {owners[0]}" for tag, owners in found.installed.tags().items())
    return passed(
        f"{plural(len(found.installed.revisions), 'revision')}: {names}"
        + (f" (tags: {tags})" if tags else ""),
        details,
        revisions=listing,
    )


@check(
    "revision-labels",
    hint="label them with an installed revision or tag (sidecar-injector tag list), or install"
    " the revision they name",
    needs=[REVISIONS, NAMESPACES, PODS],
)
def revision_labels(context: Context) -> Outcome:
    """Every ``sidecar.mesh.io/rev`` label on a namespace or a pod names an installed
    revision or tag: any other value leaves its pods without the sidecar."""
    found = context.revisions
    if found.error:
        return warned(found.error, "")
    if context.namespaces.error:
        return warned(context.namespaces.error, "")
    namespaces = Counter(
        {
            f"{info.name} ({info.labels[constants.REVISION_LABEL]})": 1
            for info in context.meshed
            if constants.REVISION_LABEL in info.labels
            and info.name not in context.namespaces.terminating
            and found.serving(info.labels[constants.REVISION_LABEL]) is None
        }
    )
    report = context.pods.report
    pods = sum(report.unknown_revisions.values())
    if not namespaces and not pods:
        scope = f"{plural(len(context.meshed), 'meshed namespace')}, {report.scanned} pods scanned"
        if not found.installed.revisions:
            return skipped(NONE_INSTALLED)
        return passed(f"every rev label names an installed revision or tag ({scope})")
    values = sorted(
        {v.rsplit("(", 1)[1].rstrip(")") for v in namespaces} | set(report.unknown_revisions)
    )
    details = [f"namespace {n}" for n in sorted(namespaces)]
    details += [f"pod {p}" for p in report.unknown_sample]
    if pods > len(report.unknown_sample):
        details.append(f"{pods - len(report.unknown_sample)} more pods")
    installed = ", ".join(found.installed.revisions) or "none"
    return failed(
        f"{plural(len(namespaces), 'namespace')} and {plural(pods, 'pod')} carry"
        f" {constants.REVISION_LABEL} values no installed revision or tag answers to"
        f" ({', '.join(values)}): their pods are created without the sidecar"
        f" (installed: {installed})",
        None,
        details + context.partial_note,
        values=values,
        namespaces=sorted(n.split(" ", 1)[0] for n in namespaces),
        pods=pods,
    )


@check(
    "revision-sidecars",
    hint="restart the workloads outdated-sidecars lists: each pod then gets the sidecar of the"
    " revision its labels pick",
    needs=[REVISIONS, PODS],
)
def revision_sidecars(context: Context) -> Outcome:
    """Per revision, the pods with its sidecar, and the outdated pods a restart would give
    its sidecar (moved there by a label or a tag, or its config changed)."""
    found = context.revisions
    if found.error:
        return warned(found.error, "")
    if not found.installed.revisions:
        return skipped(NONE_INSTALLED)
    if context.pods.error:
        return warned(context.pods.error, "")
    report = context.pods.report
    names = sorted(set(found.installed.revisions) | set(report.by_revision))
    details = [
        f"{name}: {plural(report.by_revision.get(name, 0), 'pod')} with its sidecar,"
        f" {report.outdated_by_revision.get(name, 0)} to restart into it"
        + ("" if name in found.installed.revisions else " (not installed)")
        for name in names
    ]
    if not report.complete:
        details.append(f"scan incomplete: {report.stopped_because}")
    data = {
        "injected": dict(sorted(report.by_revision.items())),
        "outdated": dict(sorted(report.outdated_by_revision.items())),
        "complete": report.complete,
    }
    outdated = sum(report.outdated_by_revision.values())
    if outdated:
        per = ", ".join(f"{n}: {c}" for n, c in sorted(report.outdated_by_revision.items()))
        return warned(
            f"{plural(outdated, 'pod')} would get another sidecar on restart ({per})",
            None,
            details,
            **data,
        )
    return passed(
        f"every injected pod runs the sidecar its revision injects now"
        f" ({plural(report.injected, 'injected pod')} of {report.scanned} scanned)",
        details,
        **data,
    )
