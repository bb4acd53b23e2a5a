"""Discovery for policy mode: the admission policies and bindings, rendered again to compare.

The policies record the config they were rendered from (``render.CONFIG_ANNOTATION``)
and their revision (``render.REVISION_LABEL``), and the bindings' selectors
hold the revision's tags; rendering that config for that revision and those
tags with this build must give the same objects. What the cluster adds (status,
resourceVersion, managedFields, ``kubectl apply``'s annotation) is not
compared; what the rendering says is, field by field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, Final
from urllib.parse import quote

from webhook.cluster.reader import Cluster, ClusterError
from webhook.engine.values import is_revision_name
from webhook.manifests.config_file import ConfigError, parse_config
from webhook.manifests.revisions import entries, revision_values
from webhook.ops.check.context import Context, PolicyInstall
from webhook.ops.check.model import Discovery
from webhook.policy.bindings import binding_name
from webhook.policy.cel import Unsupported
from webhook.policy.render import (
    CONFIG_ANNOTATION,
    DIGEST_ANNOTATION,
    REVISION_LABEL,
    render_policy,
)

API: Final = "/apis/admissionregistration.k8s.io/v1"
POLICIES: Final = ("MutatingAdmissionPolicy", "ValidatingAdmissionPolicy")
BINDINGS: Final = ("MutatingAdmissionPolicyBinding", "ValidatingAdmissionPolicyBinding")
PLURALS: Final = {
    "MutatingAdmissionPolicy": "mutatingadmissionpolicies",
    "MutatingAdmissionPolicyBinding": "mutatingadmissionpolicybindings",
    "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
}


def find_policy(cluster: Cluster, context: Context) -> PolicyInstall:
    """The policies named like the install and their revision's bindings (one per entry,
    ``webhook.policy.bindings``), and how they differ from the rendering."""
    name = context.options.configuration
    found: dict[tuple[str, str], Mapping[str, Any]] = {}
    try:
        for kind in POLICIES:
            obj = cluster.get(_path(kind, name))
            if obj is not None:
                found[(kind, name)] = obj
        revision = _revision(found.values()) or context.options.revision
        for entry in entries(revision, (), ()):
            for kind in BINDINGS:
                binding = binding_name(name, entry.entry)
                obj = cluster.get(_path(kind, binding))
                if obj is not None:
                    found[(kind, binding)] = obj
    except ClusterError as err:
        return PolicyInstall(error=str(err))
    if not found:
        return PolicyInstall()
    bindings = [obj for (kind, _), obj in found.items() if kind in BINDINGS]
    selectors = tuple(
        ((obj.get("spec") or {}).get("matchResources") or {}).get("namespaceSelector") or {}
        for obj in bindings
    )
    tags = _tags(bindings, revision)
    mutating = found.get(("MutatingAdmissionPolicy", name)) or {}
    annotations = (mutating.get("metadata") or {}).get("annotations") or {}
    install = PolicyInstall(
        exists=True,
        missing=_missing(found, name, revision),
        revision=revision,
        digest=str(annotations.get(DIGEST_ANNOTATION, "")),
        selectors=selectors,
    )
    text = annotations.get(CONFIG_ANNOTATION)
    if not isinstance(text, str):
        return replace(install, config_error=f"it has no {CONFIG_ANNOTATION} annotation")
    try:
        config = parse_config(text, origin=f"the {CONFIG_ANNOTATION} annotation")
        expected = render_policy(config, revision=revision, tags=tags)
    except (ConfigError, Unsupported) as err:
        return replace(install, config_error=str(err))
    differences = []
    for want in expected:
        key = (want["kind"], want["metadata"]["name"])
        have = found.get(key)
        if have is not None:
            differences += [f"{key[0]} {key[1]}: {d}" for d in _differences(want, have)]
    return replace(install, config=config, differences=tuple(differences))


def _path(kind: str, name: str) -> str:
    return f"{API}/{PLURALS[kind]}/{quote(name, safe='')}"


def _revision(objects: Iterable[Mapping[str, Any]]) -> str:
    """The revision the policies' label names ('' when neither has one)."""
    for obj in objects:
        label = ((obj.get("metadata") or {}).get("labels") or {}).get(REVISION_LABEL)
        if isinstance(label, str) and is_revision_name(label):
            return label
    return ""


def _tags(bindings: Iterable[Mapping[str, Any]], revision: str) -> list[str]:
    """The ``rev`` values the bindings answer to besides the revision's name."""
    tags: list[str] = []
    for obj in bindings:
        resources = (obj.get("spec") or {}).get("matchResources") or {}
        for key in ("namespaceSelector", "objectSelector"):
            for value in revision_values(resources.get(key)) or []:
                if value != revision and value not in tags:
                    tags.append(value)
    return tags


def _missing(
    found: Mapping[tuple[str, str], Mapping[str, Any]], name: str, revision: str
) -> tuple[str, ...]:
    """The objects of the revision's policy mode that are not there, as "KIND NAME"."""
    wanted = [(kind, name) for kind in POLICIES] + [
        (kind, binding_name(name, entry.entry))
        for kind in BINDINGS
        for entry in entries(revision, (), ())
    ]
    return tuple(f"{kind} {item}" for kind, item in wanted if (kind, item) not in found)


def _differences(want: Mapping[str, Any], have: Mapping[str, Any]) -> list[str]:
    """Where ``have`` departs from ``want`` (only the fields the rendering sets)."""
    out: list[str] = []
    want_meta, have_meta = want["metadata"], have.get("metadata") or {}
    for field in ("labels", "annotations"):
        theirs = have_meta.get(field) or {}
        for key, value in (want_meta.get(field) or {}).items():
            if theirs.get(key) != value:
                out.append(f"metadata.{field}[{key}] differs")
    out += _compare("spec", want.get("spec"), have.get("spec"))
    return out


def _compare(path: str, want: Any, have: Any) -> list[str]:
    """Paths under ``path`` where ``have`` lacks or changes what ``want`` has.

    Fields the API server defaults (and the rendering leaves out) are not
    differences; a list must match item for item.
    """
    if isinstance(want, Mapping) and isinstance(have, Mapping):
        out: list[str] = []
        for key, value in want.items():
            out += _compare(f"{path}.{key}", value, have.get(key))
        return out
    if isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        out = []
        for index, (mine, theirs) in enumerate(zip(want, have, strict=True)):
            label = mine.get("name") if isinstance(mine, Mapping) else None
            out += _compare(f"{path}[{label or index}]", mine, theirs)
        return out
    return [] if want == have else [f"{path} differs"]


POLICY: Final = Discovery("policy", "the admission policies", find_policy)
