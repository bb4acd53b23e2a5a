"""Discovery for policy mode: the admission policies and bindings, rendered again to compare.

The policies record the config they were rendered from (``render.CONFIG_ANNOTATION``)
and their revision (``render.REVISION_LABEL``); rendering that config with this
build must give the same four objects. What the cluster adds (status,
resourceVersion, managedFields, ``kubectl apply``'s annotation) is not
compared; what the rendering says is, field by field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final
from urllib.parse import quote

from webhook.cluster.reader import Cluster, ClusterError
from webhook.manifests.config_file import ConfigError, parse_config
from webhook.ops.check.context import Context, PolicyInstall
from webhook.ops.check.model import Discovery
from webhook.policy.cel import Unsupported
from webhook.policy.render import (
    CONFIG_ANNOTATION,
    DIGEST_ANNOTATION,
    REVISION_LABEL,
    render_policy,
)

API: Final = "/apis/admissionregistration.k8s.io/v1"
PLURALS: Final = {
    "MutatingAdmissionPolicy": "mutatingadmissionpolicies",
    "MutatingAdmissionPolicyBinding": "mutatingadmissionpolicybindings",
    "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
}


def find_policy(cluster: Cluster, context: Context) -> PolicyInstall:
    """The four objects named like the install, and how they differ from the rendering."""
    name = context.options.configuration
    found: dict[str, Mapping[str, Any]] = {}
    try:
        for kind, plural in PLURALS.items():
            obj = cluster.get(f"{API}/{plural}/{quote(name, safe='')}")
            if obj is not None:
                found[kind] = obj
    except ClusterError as err:
        return PolicyInstall(error=str(err))
    if not found:
        return PolicyInstall()
    missing = tuple(f"{kind} {name}" for kind in PLURALS if kind not in found)
    selectors = tuple(
        ((obj.get("spec") or {}).get("matchResources") or {}).get("namespaceSelector") or {}
        for kind, obj in found.items()
        if kind.endswith("Binding")
    )
    mutating = found.get("MutatingAdmissionPolicy") or {}
    metadata = mutating.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    revision = str((metadata.get("labels") or {}).get(REVISION_LABEL, ""))
    install = PolicyInstall(
        exists=True,
        missing=missing,
        revision=revision,
        digest=str(annotations.get(DIGEST_ANNOTATION, "")),
        selectors=selectors,
    )
    text = annotations.get(CONFIG_ANNOTATION)
    if not isinstance(text, str):
        return replace(install, config_error=f"it has no {CONFIG_ANNOTATION} annotation")
    try:
        config = parse_config(text, origin=f"the {CONFIG_ANNOTATION} annotation")
        expected = render_policy(config, revision=revision or None)
    except (ConfigError, Unsupported) as err:
        return replace(install, config_error=str(err))
    differences = []
    for want in expected:
        have = found.get(want["kind"])
        if have is not None:
            differences += [f"{want['kind']} {name}: {d}" for d in _differences(want, have)]
    return replace(install, config=config, differences=tuple(differences))


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
