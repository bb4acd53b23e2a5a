"""Discovery steps for what the install serves: the namespaces, dry-run pods, the running pods.

The dry-run pods also tell which injector version runs and whether this
build computes the same containers it injects (``Reference``): the scan for
outdated sidecars needs that, so it is this step's output, not a side effect
of the dry-run check.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import quote

from webhook import __version__
from webhook.cluster.reader import Cluster, ClusterError, TimeUp
from webhook.contract import constants
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine.config import InjectorConfig
from webhook.manifests.revisions import picked
from webhook.ops.check.context import (
    MAX_NAMESPACES,
    Context,
    DryRuns,
    Namespaces,
    PodScan,
    Reference,
)
from webhook.ops.check.discover_install import INJECTOR, WEBHOOK
from webhook.ops.check.discover_policy import POLICY
from webhook.ops.check.discover_revisions import REVISIONS
from webhook.ops.check.model import Discovery
from webhook.ops.outdated import (
    Expected,
    Report,
    StatusUnreadable,
    expected,
    owning_workload,
    recorded,
    staleness,
)

MAX_OWNER_LOOKUPS: Final = 200
# Pods named per rev value that picks no installed revision (the rest are counted).
SAMPLE_UNKNOWN: Final = 5
POLICY_STALE: Final = (
    "injected other than the installed policy injects now (another policy, config or settings)"
)
EXPECTED_CACHE: Final = 4096
PROBE_POD_PREFIX: Final = "sidecar-injector-check-"
FIELD_MANAGER: Final = "sidecar-injector-check"


# --- namespaces ------------------------------------------------------------------------


def find_namespaces(cluster: Cluster, context: Context) -> Namespaces:
    """Every Namespace (at most 20,000), or with ``--namespace`` that one and the excluded."""
    found: dict[str, NamespaceInfo] = {}
    terminating: set[str] = set()
    partial = False
    wanted = context.options.namespace

    def keep(obj: Mapping[str, Any]) -> None:
        info = namespace_info(obj)
        if info is None:
            return
        found[info.name] = info
        status = obj.get("status")
        if isinstance(status, Mapping) and status.get("phase") == "Terminating":
            terminating.add(info.name)

    try:
        if wanted is not None:
            for name in {wanted, *context.excluded}:
                obj = cluster.get(f"/api/v1/namespaces/{quote(name, safe='')}")
                if obj is not None:
                    keep(obj)
        else:
            for obj in cluster.list("/api/v1/namespaces", page_size=500):
                keep(obj)
                if len(found) >= MAX_NAMESPACES:
                    partial = True
                    break
    except ClusterError as err:
        return Namespaces(error=f"cannot read the namespaces: {err}")
    return Namespaces(MappingProxyType(found), partial=partial, terminating=frozenset(terminating))


def namespace_info(obj: Mapping[str, Any]) -> NamespaceInfo | None:
    """Labels and the ``sidecar.mesh.io/`` annotations of a Namespace (what checks need)."""
    try:
        info = NamespaceInfo.from_object(obj)
    except (ValueError, AttributeError):
        return None
    kept = {k: v for k, v in info.annotations.items() if k.startswith(constants.PREFIX)}
    return NamespaceInfo(info.name, info.labels, MappingProxyType(kept))


# --- dry-run pods ------------------------------------------------------------------------


def dry_run_targets(context: Context) -> tuple[list[NamespaceInfo], bool]:
    """The namespaces that get a dry-run pod, and whether the pod opts in by label.

    Nothing opted in yet: a pod that opts itself in, in ``default``, still
    proves the path. Empty when there is nothing to try (the dry-run check
    says why).
    """
    if context.namespaces.error:
        return [], False
    opted = [i for i in context.opted_in if i.name not in context.namespaces.terminating]
    if opted:
        return opted[: max(1, context.options.max_namespaces)], False
    if context.options.namespace is not None:
        return [], False
    default = context.namespaces.by_name.get("default")
    return ([default], True) if default is not None else ([], False)


def find_dry_runs(cluster: Cluster, context: Context) -> DryRuns:
    """A server-side dry-run pod in each target namespace: injected, or what happened."""
    probed, opt_in_label = dry_run_targets(context)
    outcomes = []
    reference = Reference()
    for info in probed:
        what, found = _dry_run(cluster, info, opt_in_label=opt_in_label)
        outcomes.append((info.name, what))
        if found is not None and reference.digests_confirmed is None:
            reference = _reference(
                info, *found, config=context.injector.config, policy=context.policy.digest
            )
    return DryRuns(opt_in_label, tuple(outcomes), reference)


def _dry_run(
    cluster: Cluster, info: NamespaceInfo, *, opt_in_label: bool
) -> tuple[str, tuple[str, str | None] | None]:
    """("", (version, digest)) when the pod came back injected, else (what happened, None)."""
    labels = {"app.kubernetes.io/name": "sidecar-injector-check"}
    if opt_in_label:
        labels[constants.INJECT_KEY] = "true"
    try:
        pod = cluster.dry_run_pod(info.name, probe_pod(labels), field_manager=FIELD_MANAGER)
    except ClusterError as err:
        return f"refused: {err}", None
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    names = {
        c.get("name")
        for key in ("containers", "initContainers")
        for c in spec.get(key) or []
        if isinstance(c, dict)
    }
    if constants.PROXY_CONTAINER not in names:
        return "admitted without mesh-proxy (the webhook was not called, or skipped it)", None
    try:
        status = recorded(metadata.get("annotations") or {})
    except StatusUnreadable as err:
        return f"the status annotation {err}", None
    if status is None:
        return "injected, but without the status annotation", None
    return "", (status.version, status.digest)


def _reference(
    info: NamespaceInfo,
    version: str,
    digest: str | None,
    *,
    config: InjectorConfig,
    policy: str = "",
) -> Reference:
    """Compare what the running injector wrote with what this check's engine computes.

    In policy mode the status digest is the policy's (``policy``): the pod was
    injected by the installed policy, which ``admission-policies`` compares
    with this build's rendering of its config.
    """
    if policy and digest == policy and version == __version__:
        return Reference(version, True)
    if version != __version__:
        return Reference(
            version,
            False,
            f"container digests not compared: the injector is {version}, this check {__version__}",
        )
    if expected(info, {}, config).digest != digest:
        return Reference(
            version,
            False,
            f"container digests not compared: for namespace {info.name} the injector"
            " injects other containers than this check computes (another config or build)",
        )
    return Reference(version, True)


def probe_pod(labels: Mapping[str, str]) -> dict[str, Any]:
    """The dry-run Pod: it passes PodSecurity ``restricted`` on its own, so a refusal is ours.

    Small requests and limits keep a namespace's ResourceQuota from refusing it first.
    """
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": PROBE_POD_PREFIX, "labels": dict(labels)},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "16Mi"},
                        "limits": {"cpu": "10m", "memory": "16Mi"},
                    },
                }
            ],
        },
    }


# --- the pods' sidecars ------------------------------------------------------------------


def find_outdated(cluster: Cluster, context: Context) -> PodScan:
    """Pods (as metadata, in pages, for at most ``scan_seconds``) with an outdated sidecar."""
    reference = context.dry_runs.reference
    judge = _Judge(
        context,
        version=reference.version or __version__,
        digests=reference.digests_confirmed is not False,
        lookups=_OwnerLookups(cluster),
        policy=context.policy.digest,
    )
    wanted = context.options.namespace
    path = f"/api/v1/namespaces/{quote(wanted, safe='')}/pods" if wanted else "/api/v1/pods"
    report = Report()
    until = time.monotonic() + context.options.scan_seconds
    try:
        for pod in cluster.list(path, metadata_only=True, until=until):
            report.scanned += 1
            judge(pod, report)
    except TimeUp:
        report.complete = False
        report.stopped_because = f"stopped after {context.options.scan_seconds:g}s"
    except ClusterError as err:
        if report.scanned == 0:
            return PodScan(report, error=f"cannot list pods: {err}")
        report.complete = False
        report.stopped_because = f"stopped: {err}"
    return PodScan(report)


class _Judge:
    """Counts one pod into the report: injected? outdated, and by whose workload?

    Each pod is judged by the revision its labels pick now (the pod's
    ``sidecar.mesh.io/rev``, else its namespace's), with that revision's
    config; a label that picks no installed revision is counted apart.
    """

    def __init__(
        self,
        context: Context,
        *,
        version: str,
        digests: bool,
        lookups: _OwnerLookups,
        policy: str = "",
    ) -> None:
        self._policy = policy
        # The revision the checked policy is: only its pods carry its digest.
        self._policy_revision = context.policy.revision or constants.DEFAULT_REVISION
        self._namespaces = context.namespaces.by_name
        # Pods of a namespace being deleted are going with it: neither outdated nor mislabelled.
        self._terminating = context.namespaces.terminating
        self._config = context.injector.config
        self._revisions = context.revisions
        self._excluded = set(context.excluded)
        self._version = version
        self._digests = digests
        self._lookups = lookups
        self._cache: dict[tuple[str, tuple[tuple[str, str], ...], str | None], Expected] = {}

    def _serving(self, metadata: dict[str, Any], namespace: str, report: Report) -> str | None:
        """The revision that would inject the pod now (``None``: none installed answers)."""
        labels = metadata.get("labels") or {}
        info = self._namespaces.get(namespace) or NamespaceInfo(namespace)
        if not isinstance(labels, dict):
            labels = {}
        value = picked(labels, info.labels)
        serving = self._revisions.serving(value)
        disabled = info.labels.get(constants.NAMESPACE_INJECTION_LABEL) == constants.DISABLED
        if (
            serving is None
            and value is not None
            and not disabled
            and namespace not in self._excluded
        ):
            report.unknown_revisions[value] += 1
            if len(report.unknown_sample) < SAMPLE_UNKNOWN:
                report.unknown_sample.append(f"{namespace}/{metadata.get('name')} ({value})")
        return serving

    def __call__(self, pod: dict[str, Any], report: Report) -> None:
        metadata = pod.get("metadata") or {}
        annotations = metadata.get("annotations") or {}
        if not isinstance(annotations, dict):
            return
        namespace = str(metadata.get("namespace") or "")
        if namespace in self._terminating:
            return
        serving = self._serving(metadata, namespace, report)
        try:
            found = recorded(annotations)
        except StatusUnreadable:
            report.unreadable += 1
            return
        if found is None:
            return
        report.injected += 1
        report.by_revision[found.revision] += 1
        settings = tuple(
            sorted(
                (k, v)
                for k, v in annotations.items()
                if k.startswith(constants.PREFIX)
                and isinstance(v, str)
                and k != constants.STATUS_ANNOTATION
            )
        )
        key = (namespace, settings, serving)
        now = self._cache.get(key)
        if now is None:
            info = self._namespaces.get(namespace) or NamespaceInfo(namespace)
            config = self._revisions.configs.get(serving or "") or self._config
            now = expected(info, dict(settings), config)
            if len(self._cache) < EXPECTED_CACHE:
                self._cache[key] = now
        if now.skip:
            report.not_injected_now += 1
        why = staleness(
            found,
            now,
            version=self._version,
            digests=self._digests,
            revision=serving if self._revisions.found else None,
        )
        if (
            why is not None
            and self._policy
            and found.version == self._version
            and found.revision == self._policy_revision
            and (serving is None or serving == found.revision)
        ):
            # Policy mode: a pod the installed policy injected carries its digest.
            why = None if found.digest == self._policy else POLICY_STALE
        if why is not None:
            report.add(owning_workload(pod, self._lookups), str(metadata.get("name")), why, serving)


class _OwnerLookups:
    """ReplicaSet -> Deployment and Job -> CronJob, read as metadata, cached and capped."""

    _PATHS: Final = {"ReplicaSet": "/apis/apps/v1", "Job": "/apis/batch/v1"}

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._found: dict[tuple[str, str, str], tuple[str, str] | None] = {}

    def __call__(self, namespace: str, kind: str, name: str) -> tuple[str, str] | None:
        key = (namespace, kind, name)
        if key in self._found:
            return self._found[key]
        owner = None
        if len(self._found) < MAX_OWNER_LOOKUPS:
            resource = f"{kind.lower()}s"
            path = (
                f"{self._PATHS[kind]}/namespaces/{quote(namespace, safe='')}/{resource}/"
                f"{quote(name, safe='')}"
            )
            try:
                obj = self._cluster.get(path, metadata_only=True)
            except ClusterError:
                obj = None
            refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
            for ref in refs:
                if isinstance(ref, dict) and ref.get("controller"):
                    owner = (str(ref.get("kind")), str(ref.get("name")))
        self._found[key] = owner
        return owner


# --- the steps, as the checks name them in ``needs`` ---------------------------------

NAMESPACES: Final = Discovery("namespaces", "the namespaces", find_namespaces, (WEBHOOK, INJECTOR))
DRY_RUNS: Final = Discovery(
    "dry_runs",
    "the dry-run pods",
    find_dry_runs,
    (WEBHOOK, POLICY, INJECTOR, REVISIONS, NAMESPACES),
)
PODS: Final = Discovery(
    "pods", "the pods' sidecars", find_outdated, (POLICY, INJECTOR, REVISIONS, NAMESPACES, DRY_RUNS)
)
