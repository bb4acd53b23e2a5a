"""Discovery for the revision checks: every installed revision, its tags and its config.

The revisions are the objects labelled ``sidecar.mesh.io/rev``
(``webhook.ops.installed``); each one's config is read as ``injector-config``
reads the checked one's, following its webhooks' Service to the Deployment
behind it and the ConfigMap that Deployment mounts; in policy mode, from the
config its MutatingAdmissionPolicy records (``sidecar-injector policy``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import quote

from webhook.cluster.reader import Cluster, ClusterError
from webhook.engine.config import InjectorConfig
from webhook.manifests.config_file import ConfigError, parse_config
from webhook.ops.check.context import Context, Revisions, ServiceRef
from webhook.ops.check.discover_install import injector_behind
from webhook.ops.check.model import Discovery
from webhook.ops.installed import Revision, find_installed
from webhook.policy.render import CONFIG_ANNOTATION

POLICIES: Final = "/apis/admissionregistration.k8s.io/v1/mutatingadmissionpolicies"


def find_revisions(cluster: Cluster, _context: Context) -> Revisions:
    """The installed revisions and their configs (a revision's unreadable config: a note)."""
    try:
        installed = find_installed(cluster)
    except ClusterError as err:
        return Revisions(error=f"cannot read the installed revisions: {err}")
    configs: dict[str, InjectorConfig] = {}
    notes: list[str] = []
    for name, revision in installed.revisions.items():
        config, note = _config_of(cluster, revision)
        configs[name] = config
        if note:
            notes.append(f"revision {name}: {note}")
        elif config.revision != name:
            notes.append(
                f"revision {name}: its config names revision {config.revision}, which its"
                " pods' status annotations will record"
            )
    return Revisions(installed, MappingProxyType(configs), tuple(notes), found=True)


def _config_of(cluster: Cluster, revision: Revision) -> tuple[InjectorConfig, str]:
    """The injector config a revision mounts (webhook mode) or its policy records (policy
    mode); (the defaults, why) when unreadable."""
    defaults = "its config could not be read, the built-in defaults are assumed"
    if revision.mode == "policy":
        return _policy_config(cluster, revision, defaults)
    service = _service(revision)
    if service is None:
        return InjectorConfig(), f"its webhooks call no one Service; {defaults}"
    try:
        obj = cluster.get(
            f"/api/v1/namespaces/{quote(service.namespace, safe='')}/services/"
            + quote(service.name, safe="")
        )
    except ClusterError as err:
        return InjectorConfig(), f"Service {service}: {err}; {defaults}"
    injector = injector_behind(cluster, service, obj)
    problem = injector.error or injector.config_map_error or injector.config_error
    if problem:
        return InjectorConfig(), f"{problem}; {defaults}"
    if injector.deployment is None:
        return InjectorConfig(), f"no Deployment serves Service {service}; {defaults}"
    return injector.config, ""


def _policy_config(
    cluster: Cluster, revision: Revision, defaults: str
) -> tuple[InjectorConfig, str]:
    """The config a policy revision's MutatingAdmissionPolicy records, as its revision."""
    names = {
        str((obj.obj.get("spec") or {}).get("policyName", ""))
        for obj in revision.objects
        if obj.kind == "MutatingAdmissionPolicyBinding"
    }
    if len(names) != 1:
        return InjectorConfig(), f"its bindings name no one MutatingAdmissionPolicy; {defaults}"
    (name,) = names
    try:
        policy = cluster.get(f"{POLICIES}/{quote(name, safe='')}")
    except ClusterError as err:
        return InjectorConfig(), f"MutatingAdmissionPolicy {name}: {err}; {defaults}"
    annotations = ((policy or {}).get("metadata") or {}).get("annotations") or {}
    text = annotations.get(CONFIG_ANNOTATION)
    if not isinstance(text, str):
        return InjectorConfig(), f"MutatingAdmissionPolicy {name} records no config; {defaults}"
    try:
        config = parse_config(text, origin=f"MutatingAdmissionPolicy {name}")
    except ConfigError as err:
        return InjectorConfig(), f"{err}; {defaults}"
    # What the policy's pods record is its revision (policy --revision), not the config's.
    return replace(config, revision=revision.name), ""


def _service(revision: Revision) -> ServiceRef | None:
    """The one Service the revision's webhooks call."""
    found: set[tuple[str, str, int]] = set()
    for obj in revision.objects:
        for hook in obj.obj.get("webhooks") or []:
            service: Mapping[str, Any] = (hook.get("clientConfig") or {}).get("service") or {}
            if service:
                found.add(
                    (
                        str(service.get("namespace")),
                        str(service.get("name")),
                        service.get("port", 443),
                    )
                )
    if len(found) != 1:
        return None
    namespace, name, port = found.pop()
    return ServiceRef(namespace, name, int(port))


REVISIONS: Final = Discovery("revisions", "the installed revisions", find_revisions)
