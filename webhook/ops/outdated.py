"""Outdated sidecars: pods whose injection is not what the injector would inject now.

Each injected pod carries ``sidecar.mesh.io/status`` (JSON: ``version``,
``containers``, ``initContainers``, ``volumes``, ``annotations`` and, since the
status grew it, ``digest``: a hash of the injected containers). A pod is
outdated when

- another injector version injected it, or
- its digest differs from the digest the engine computes now for that pod's
  namespace settings and its own ``sidecar.mesh.io/`` annotations (a changed
  namespace label, a new proxy version in the injector config), or
- it has no digest while the injector now writes one (an older build).

Only a restart gives a pod a new sidecar, so outdated pods are grouped by the
workload that owns them (pod -> ReplicaSet -> Deployment, Job -> CronJob,
StatefulSet, DaemonSet), with the command that replaces them.

Pure: the pods, namespaces and owners come in as plain dicts and callables;
``webhook.ops.check`` does the reading.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from webhook.contract import constants
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine import InjectionRefused, InjectionStatus, NamespaceLike, StatusError, inject
from webhook.engine.config import InjectorConfig
from webhook.manifests.patched import patched

# PodSecurity labels decide refusals, not what is injected: the pod-security
# check reports them; here they would only hide the digest.
_POD_SECURITY_PREFIX: Final = "pod-security.kubernetes.io/"
# How many pod names a report keeps per workload (the rest are counted).
SAMPLE_PODS: Final = 3

Owner = tuple[str, str]  # (kind, name)
OwnerLookup = Callable[[str, str, str], Owner | None]
"""(namespace, kind, name) of a ReplicaSet or Job -> its controller's (kind, name), if any."""


class StatusUnreadable(ValueError):
    """The status annotation is not the injector's JSON."""


@dataclass(frozen=True)
class Recorded:
    """What the status annotation of a pod says about its injection."""

    version: str
    digest: str | None
    revision: str = constants.DEFAULT_REVISION


def recorded(annotations: Mapping[str, Any]) -> Recorded | None:
    """The pod's recorded injection; ``None`` without a status annotation.

    Read by the engine's own parser, so ``check`` and ``uninject`` never
    disagree about what an annotation says.
    """
    raw = annotations.get(constants.STATUS_ANNOTATION)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise StatusUnreadable("is not a string")
    try:
        status = InjectionStatus.parse(raw)
    except StatusError as err:
        raise StatusUnreadable(str(err)) from None
    return Recorded(status.version, status.digest, status.revision)


@dataclass(frozen=True)
class Expected:
    """What the engine injects now for a pod's settings; ``skip`` says why it would not."""

    version: str = ""
    digest: str | None = None
    skip: str = ""


def expected(
    namespace: NamespaceLike, pod_annotations: Mapping[str, Any], config: InjectorConfig
) -> Expected:
    """The injection the engine makes now for a pod with these settings in ``namespace``.

    A stand-in pod opted in by label carries the pod's own ``sidecar.mesh.io/``
    annotations (its per-pod settings); the digest depends on the settings
    only, never on the app containers.
    """
    settings = {
        key: value
        for key, value in pod_annotations.items()
        if key.startswith(constants.PREFIX)
        and key not in (constants.STATUS_ANNOTATION, constants.INJECT_KEY)
        and isinstance(value, str)
    }
    probe = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "probe",
            "namespace": namespace.name,
            "labels": {constants.INJECT_KEY: "true"},
            "annotations": settings,
        },
        "spec": {"containers": [{"name": "app", "image": "probe"}]},
    }
    labels = {k: v for k, v in namespace.labels.items() if not k.startswith(_POD_SECURITY_PREFIX)}
    where = NamespaceInfo(
        namespace.name, MappingProxyType(labels), MappingProxyType(dict(namespace.annotations))
    )
    try:
        result = inject(probe, namespace=where, config=config)
    except InjectionRefused as err:
        return Expected(skip=f"would be refused now: {err}")
    if not result.injected:
        return Expected(skip=f"would not be injected now: {result.decision.reason}")
    status = recorded(patched(result)["metadata"]["annotations"])
    if status is None:  # pragma: no cover - the engine always writes it
        return Expected(skip="the engine wrote no status")
    return Expected(version=status.version, digest=status.digest)


def staleness(
    found: Recorded, now: Expected, *, version: str, digests: bool, revision: str | None = None
) -> str | None:
    """Why a pod's sidecar is outdated, or ``None`` when it is current (or cannot be told).

    ``version`` is the running injector's; ``digests`` says whether ``now``'s
    digest can be trusted for it (the engine computing it is the injector's
    version, with the injector's config). ``revision``, when known, is the
    revision the pod's labels pick now: a pod another revision injected gets
    that one's sidecar when it is restarted.
    """
    if revision is not None and found.revision != revision:
        return f"injected by revision {found.revision}, its labels now pick {revision}"
    if found.version != version:
        return f"injected by {found.version}, the injector is {version}"
    if not digests or now.skip or now.digest is None:
        return None
    if found.digest is None:
        return "injected without a container digest (an older build)"
    if found.digest != now.digest:
        return "its containers differ from what is injected now (settings or config changed)"
    return None


@dataclass(frozen=True, order=True)
class Workload:
    """Who owns the pods (the thing to restart)."""

    namespace: str
    kind: str
    name: str

    def restart(self) -> str:
        """The command (or what to do) that gives its pods a current sidecar."""
        kind = self.kind.lower()
        if kind in ("deployment", "statefulset", "daemonset"):
            return f"kubectl rollout restart -n {self.namespace} {kind}/{self.name}"
        if kind == "cronjob":
            return "its next Job gets the current sidecar"
        if kind == "job":
            return f"re-create Job {self.name} (a Job's pods are not replaced while it runs)"
        if kind == "pod":
            return f"re-create pod {self.name} (it has no controller)"
        if kind == "replicaset":
            return (
                f"kubectl delete pod -n {self.namespace} <its pods> "
                f"(ReplicaSet {self.name} re-creates them)"
            )
        return f"restart it through its controller ({self.kind} {self.name})"


def owning_workload(pod: Mapping[str, Any], lookup: OwnerLookup) -> Workload:
    """The workload to restart for ``pod``: follows ReplicaSet -> Deployment, Job -> CronJob."""
    metadata = pod.get("metadata") or {}
    namespace = str(metadata.get("namespace") or "")
    name = str(metadata.get("name") or "")
    refs = [r for r in metadata.get("ownerReferences") or [] if isinstance(r, dict)]
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if ref is None or not isinstance(ref.get("kind"), str) or not isinstance(ref.get("name"), str):
        return Workload(namespace, "Pod", name)
    kind, owner = ref["kind"], ref["name"]
    if kind in ("ReplicaSet", "Job"):
        parent = lookup(namespace, kind, owner)
        if parent is not None:
            return Workload(namespace, *parent)
    return Workload(namespace, kind, owner)


@dataclass
class Entry:
    """Outdated pods of one workload."""

    pods: int = 0
    sample: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)


@dataclass
class Report:
    """What a scan of the pods found.

    Per revision: ``by_revision`` counts the pods with a sidecar each
    revision injected (their status says), ``outdated_by_revision`` the
    outdated pods by the revision a restart would give them, and
    ``unknown_revisions`` the pods whose ``rev`` label names no installed
    revision or tag (created now, they get no sidecar), a few named in
    ``unknown_sample``.
    """

    scanned: int = 0
    injected: int = 0
    unreadable: int = 0
    not_injected_now: int = 0
    outdated: dict[Workload, Entry] = field(default_factory=dict)
    complete: bool = True
    stopped_because: str = ""
    by_revision: Counter[str] = field(default_factory=Counter)
    outdated_by_revision: Counter[str] = field(default_factory=Counter)
    unknown_revisions: Counter[str] = field(default_factory=Counter)
    unknown_sample: list[str] = field(default_factory=list)

    def add(self, workload: Workload, pod: str, reason: str, revision: str | None = None) -> None:
        """Count one outdated pod of ``workload`` (that ``revision`` would inject anew)."""
        if revision is not None:
            self.outdated_by_revision[revision] += 1
        entry = self.outdated.setdefault(workload, Entry())
        entry.pods += 1
        entry.reasons[reason] += 1
        if len(entry.sample) < SAMPLE_PODS:
            entry.sample.append(pod)

    def per_namespace(self) -> Counter[str]:
        """Outdated pods per namespace."""
        counts: Counter[str] = Counter()
        for workload, entry in self.outdated.items():
            counts[workload.namespace] += entry.pods
        return counts

    @property
    def outdated_pods(self) -> int:
        """All outdated pods."""
        return sum(entry.pods for entry in self.outdated.values())
