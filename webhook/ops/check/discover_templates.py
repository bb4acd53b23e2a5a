"""Discovery step for the locks: workloads whose pod templates change a locked setting.

The injector refuses a pod whose annotation gives a locked setting
(``lockedSettings`` in its config) another value than the namespace and the
config decide. Running pods were admitted already and are never admitted
again; what will be refused is the next pod a controller makes from its
template. So the templates are read (Deployments, StatefulSets, DaemonSets,
ReplicaSets, Jobs and CronJobs; a ReplicaSet a Deployment controls, or a Job
a CronJob controls, is judged through its owner, whose template it copies)
and judged by the engine itself: ``decide`` (would the pod be injected?),
the namespace's settings in force, and ``locked_conflicts``. Bare pods are
left out: nothing makes new ones from them.

Bounded like the pod scan: lists in pages (``Cluster.list``), the whole scan
within ``Options.scan_seconds``, at most ``MAX_KEPT`` conflicts kept (the
rest counted).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import quote

from webhook.cluster.reader import Cluster, ClusterError, TimeUp
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine.config import InjectorConfig
from webhook.engine.decision import decide
from webhook.engine.settings import ProxySettings, SettingsError, locked_conflicts, resolve_settings
from webhook.engine.values import shorten
from webhook.engine.workloads import WORKLOADS, ObjectError, PodLocation, pod_parts
from webhook.ops.check.context import Context, LockedTemplate, Templates
from webhook.ops.check.discover_install import INJECTOR
from webhook.ops.check.discover_pods import NAMESPACES
from webhook.ops.check.model import Discovery

# (kind, API group version, resource, the owner kind that makes it redundant)
KINDS: Final = (
    ("Deployment", "apps/v1", "deployments", None),
    ("StatefulSet", "apps/v1", "statefulsets", None),
    ("DaemonSet", "apps/v1", "daemonsets", None),
    ("ReplicaSet", "apps/v1", "replicasets", "Deployment"),
    ("Job", "batch/v1", "jobs", "CronJob"),
    ("CronJob", "batch/v1", "cronjobs", None),
)
MAX_KEPT: Final = 100
# Values are kept cut to this (a CIDR list may be 8 KiB).
MAX_VALUE_CHARS: Final = 256


def find_templates(cluster: Cluster, context: Context) -> Templates:
    """Every template that would be injected and changes a locked setting (none locked: no read)."""
    config = context.injector.config
    if not config.locked_settings or context.namespaces.error:
        return Templates()
    judge = _Judge(context.namespaces.by_name, config)
    wanted = context.options.namespace
    until = time.monotonic() + context.options.scan_seconds
    problems: list[str] = []
    stopped = ""
    failed = 0
    for kind, group_version, resource, owner in KINDS:
        scope = f"/namespaces/{quote(wanted, safe='')}" if wanted else ""
        path = f"/apis/{group_version}{scope}/{resource}"
        try:
            for obj in cluster.list(path, until=until):
                if not _controlled_by(obj, owner):
                    judge(kind, obj)
        except TimeUp:
            stopped = f"stopped after {context.options.scan_seconds:g}s, in the {resource}"
            break
        except ClusterError as err:
            failed += 1
            problems.append(f"cannot list {resource}: {err}")
    if failed == len(KINDS):
        return Templates(error=problems[0])
    return Templates(
        scanned=judge.scanned,
        conflicts=tuple(judge.kept),
        more=judge.more,
        problems=tuple(problems + judge.problems),
        stopped=stopped,
    )


def _controlled_by(obj: Mapping[str, Any], owner: str | None) -> bool:
    """Whether ``obj``'s controller is a workload of kind ``owner`` (judged on its own)."""
    if owner is None:
        return False
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(
        isinstance(ref, dict) and ref.get("controller") is True and ref.get("kind") == owner
        for ref in refs
    )


class _Judge:
    """Judges one workload's template: injected? which locked settings does it change?"""

    def __init__(self, namespaces: Mapping[str, NamespaceInfo], config: InjectorConfig) -> None:
        self._namespaces = namespaces
        self._config = config
        self._in_force: dict[str, ProxySettings | None] = {}
        self.scanned = 0
        self.kept: list[LockedTemplate] = []
        self.more = 0
        self.problems: list[str] = []

    def __call__(self, kind: str, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        namespace = str(metadata.get("namespace") or "")
        try:
            meta, spec = pod_parts(obj, PodLocation(kind, WORKLOADS[kind][1]))
        except ObjectError:
            return  # not a template the API server would have stored
        self.scanned += 1
        info = self._namespaces.get(namespace) or NamespaceInfo(namespace, MappingProxyType({}))
        if not decide(meta, spec, namespace=info, config=self._config).inject:
            return
        settings = self._settings(info)
        if settings is None:
            return
        for conflict in locked_conflicts(
            settings, meta.get("annotations") or {}, config=self._config
        ):
            if len(self.kept) >= MAX_KEPT:
                self.more += 1
                continue
            self.kept.append(
                LockedTemplate(
                    namespace,
                    kind,
                    str(metadata.get("name")),
                    conflict.key,
                    shorten(conflict.raw, MAX_VALUE_CHARS, quote=False),
                    shorten(conflict.in_force.value, MAX_VALUE_CHARS, quote=False),
                    str(conflict.in_force.source),
                )
            )

    def _settings(self, info: NamespaceInfo) -> ProxySettings | None:
        """The settings in force in the namespace (the pod's annotations left out), once each."""
        if info.name not in self._in_force:
            try:
                found: ProxySettings | None = resolve_settings(
                    self._config,
                    namespace_labels=info.labels,
                    namespace_annotations=info.annotations,
                    pod_annotations={},
                )
            except SettingsError as err:
                found = None
                self.problems.append(f"namespace {info.name}: {err}")
            self._in_force[info.name] = found
        return self._in_force[info.name]


TEMPLATES: Final = Discovery(
    "templates", "the workloads' pod templates", find_templates, (INJECTOR, NAMESPACES)
)
