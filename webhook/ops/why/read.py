"""What ``why`` reads from the cluster: the object, its namespace, the install's config, its pods.

Every read goes through ``webhook.cluster.reader.Cluster`` (bounded in bytes
and time, lists in pages and in all). The object and its namespace must be
read, or there is nothing to explain: their errors are one line
(:class:`WhyError`). The install and the pods only add to the answer: what
cannot be read of them is said in a note, never an error.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from webhook import __version__
from webhook.cluster.reader import Cluster, ClusterError, TimeUp
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine.config import InjectorConfig
from webhook.manifests.config_file import ConfigError, load_config
from webhook.ops.check.context import Context, Options
from webhook.ops.check.discover_install import find_injector, find_service, find_webhook
from webhook.ops.why.target import BY_KIND, CRONJOB, DEPLOYMENT, JOB, POD, REPLICASET, Target

_VERSION: Final = re.compile(r"\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?")
# The most pods of one workload examined for outdated sidecars; the rest are
# counted as not examined (a DaemonSet on a large cluster has thousands).
MAX_PODS: Final = 500
# ReplicaSets or Jobs whose pods count as the workload's (a Deployment keeps
# revisionHistoryLimit of them, 10 by default; a CronJob its history limits).
MAX_OWNERS: Final = 100


class WhyError(Exception):
    """Nothing to explain: the object or its namespace cannot be read. One line."""


def failure(err: ClusterError, what: str, host: str) -> WhyError:
    """One line for a read of ``what`` that failed, by what the failure means."""
    if not err.answered:
        return WhyError(f"cannot reach the API server at {host}: {err}")
    if err.status == 404:
        return WhyError(f"{what} not found")
    if err.status == 403:
        return WhyError(f"no access to {what}: {err}")
    if err.status == 401:
        return WhyError(f"the API server at {host} did not accept the credentials: {err}")
    return WhyError(f"cannot read {what}: {err}")


def read_object(cluster: Cluster, target: Target) -> dict[str, Any]:
    """The object itself, as the API server has it."""
    what = f"{target.kind.kind.lower()} {target.name} in namespace {target.namespace}"
    try:
        found = cluster.get(target.path)
    except ClusterError as err:
        raise failure(err, what, cluster.host) from None
    if found is None:
        raise WhyError(f"{what} not found")
    return found


def read_namespace(cluster: Cluster, name: str) -> NamespaceInfo:
    """The namespace's labels and annotations, which decide with the pod's own."""
    what = f"namespace {name}"
    try:
        found = cluster.get(f"/api/v1/namespaces/{quote(name, safe='')}")
    except ClusterError as err:
        raise failure(err, what, cluster.host) from None
    if found is None:
        raise WhyError(f"{what} not found")
    try:
        return NamespaceInfo.from_object(found)
    except (ValueError, AttributeError) as err:
        raise WhyError(f"{what} is not a Namespace the injector can read: {err}") from None


# --- the install ------------------------------------------------------------------------


@dataclass(frozen=True)
class Install:
    """The injector config ``why`` decides with, and the webhooks that would be called."""

    config: InjectorConfig
    config_source: str
    configuration: str
    webhooks: tuple[Mapping[str, Any], ...] = ()
    found: bool = False  # the webhook configuration exists
    notes: tuple[str, ...] = ()
    # The running injector's version: its image's tag when that is a version,
    # else this build's (said in a note).
    version: str = __version__


def read_install(cluster: Cluster, *, configuration: str, config_file: Path | None) -> Install:
    """The webhook configuration and the config its Deployment mounts, as ``check`` finds them.

    ``config_file`` (``--config``) replaces the mounted config. Without
    either, the built-in defaults, and a note saying why.
    """
    context = Context(options=Options(configuration=configuration))
    context = dataclasses.replace(context, webhook=find_webhook(cluster, context))
    context = dataclasses.replace(context, service=find_service(cluster, context))
    notes: list[str] = []
    webhook = context.webhook
    if webhook.error:
        notes.append(f"cannot read the webhook configuration {configuration}: {webhook.error}")
    elif not webhook.exists:
        notes.append(f"no webhook configuration {configuration}: nothing calls the injector")
    base = Install(
        InjectorConfig(), "", configuration, webhook.webhooks, webhook.exists, tuple(notes)
    )
    injector = find_injector(cluster, context)
    version = image_version(injector.deployment)
    if version is None and injector.deployment is not None:
        notes.append(
            f"the injector's image tag is not a version: sidecars are judged against this"
            f" build's ({__version__})"
        )
    base = dataclasses.replace(base, version=version or __version__, notes=tuple(notes))
    if config_file is not None:
        try:
            config = load_config(config_file)
        except ConfigError as err:
            raise WhyError(str(err)) from None
        return dataclasses.replace(base, config=config, config_source=f"--config {config_file}")
    if injector.config_text is not None and not injector.config_error:
        namespace = webhook.service.namespace if webhook.service else ""
        source = f"ConfigMap {namespace}/{injector.config_map}"
        return dataclasses.replace(base, config=injector.config, config_source=source)
    problem = (
        injector.error
        or injector.config_map_error
        or injector.config_error
        or ("the injector's Deployment was not found" if injector.deployment is None else "")
        or "the Deployment mounts no config"
    )
    return dataclasses.replace(
        base,
        config_source="built-in defaults",
        notes=(*base.notes, f"injector config: built-in defaults ({problem})"),
    )


def image_version(deployment: Mapping[str, Any] | None) -> str | None:
    """The version in the injector's image tag (``.../webhook:0.1.0``), if it is one."""
    spec = (((deployment or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in spec.get("containers") or []:
        image = str(container.get("image") or "").split("@", 1)[0]
        name, _, tag = image.rpartition(":")
        if name and "/" not in tag and _VERSION.fullmatch(tag.removeprefix("v")):
            return tag.removeprefix("v")
    return None


# --- the pods -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pods:
    """The workload's pods (metadata only, or the pod itself), and what was not read."""

    items: tuple[Mapping[str, Any], ...] = ()
    complete: bool = True
    note: str = ""
    owners: tuple[tuple[str, str], ...] = field(default=())  # (kind, name) of ReplicaSets/Jobs


def read_pods(cluster: Cluster, target: Target, obj: Mapping[str, Any]) -> Pods:
    """The pods running for ``obj``: its own, or those of the ReplicaSets/Jobs it controls."""
    if target.kind is POD:
        return Pods((obj,))
    uid = str((obj.get("metadata") or {}).get("uid") or "")
    selector = selector_text((obj.get("spec") or {}).get("selector"))
    try:
        owners: dict[str, tuple[str, str]] = {uid: (target.kind.kind, target.name)}
        if target.kind in (DEPLOYMENT, CRONJOB):
            child = REPLICASET if target.kind is DEPLOYMENT else JOB
            owners = _controlled(cluster, child, target.namespace, uid, selector)
        return _pods(cluster, target.namespace, owners, selector)
    except ClusterError as err:
        return Pods(complete=False, note=f"cannot list its pods: {err}")
    except TimeUp:  # pragma: no cover - lists here set no deadline of their own
        return Pods(complete=False, note="its pods could not be listed in time")


def _controlled(
    cluster: Cluster, kind: Any, namespace: str, uid: str, selector: str | None
) -> dict[str, tuple[str, str]]:
    """uid -> (kind, name) of the objects of ``kind`` that ``uid`` controls."""
    query = {"labelSelector": selector} if selector else None
    found: dict[str, tuple[str, str]] = {}
    for item in cluster.list(kind.collection(namespace), query=query, metadata_only=True):
        metadata = item.get("metadata") or {}
        if controller_uid(metadata) == uid and metadata.get("uid"):
            found[str(metadata["uid"])] = (kind.kind, str(metadata.get("name")))
            if len(found) >= MAX_OWNERS:
                break
    return found


def _pods(
    cluster: Cluster, namespace: str, owners: Mapping[str, tuple[str, str]], selector: str | None
) -> Pods:
    query = {"labelSelector": selector} if selector else None
    kept: list[Mapping[str, Any]] = []
    complete = True
    for pod in cluster.list(POD.collection(namespace), query=query, metadata_only=True):
        metadata = pod.get("metadata") or {}
        if controller_uid(metadata) in owners:
            if len(kept) >= MAX_PODS:
                complete = False
                break
            kept.append(pod)
    note = "" if complete else f"only the first {MAX_PODS} pods were examined"
    return Pods(tuple(kept), complete, note, tuple(sorted(set(owners.values()))))


def controller_uid(metadata: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller (the owner reference with ``controller: true``)."""
    for ref in metadata.get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller") is True:
            uid = ref.get("uid")
            return uid if isinstance(uid, str) else None
    return None


def selector_text(selector: Any) -> str | None:
    """A LabelSelector as a ``labelSelector`` query (``app=web,tier in (a,b)``), or None."""
    if not isinstance(selector, dict):
        return None
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = ",".join(str(v) for v in expression.get("values") or [])
        if operator == "In":
            parts.append(f"{key} in ({values})")
        elif operator == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif operator == "Exists":
            parts.append(str(key))
        elif operator == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts) or None


class OwnerLookup:
    """ReplicaSet -> Deployment and Job -> CronJob, for the workload a pod's fix restarts."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def __call__(self, namespace: str, kind: str, name: str) -> tuple[str, str] | None:
        """(kind, name) of the controller of ``kind``/``name``, if it has one and can be read."""
        known = BY_KIND.get(kind)
        if known is None:
            return None
        try:
            obj = self._cluster.get(known.path(namespace, name), metadata_only=True)
        except ClusterError:
            return None
        for ref in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []:
            if isinstance(ref, dict) and ref.get("controller") is True:
                return str(ref.get("kind")), str(ref.get("name"))
        return None
