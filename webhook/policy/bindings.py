"""The policy bindings of one revision: the same disjoint entries as its webhooks.

A revision installed in policy mode has, for each of its entries
(``webhook.manifests.revisions.entries``: ``namespace`` and ``object`` for the
default revision, ``rev-pod`` and ``rev-namespace`` for every revision), one
MutatingAdmissionPolicyBinding and one ValidatingAdmissionPolicyBinding whose
``matchResources`` carry that entry's namespace and object selectors. So the
API server hands each pod to the policies of exactly the revision the
webhook entries would hand it to, in any mix of revisions and modes, and a
tag (one more value in the ``rev`` ``In`` expressions) moves policy
revisions as it moves webhook ones.

Bindings have no ``matchConditions``: what the webhooks' conditions keep out
(host network, Windows, mirror pods, opted out, already injected, and for
``object`` a pod that does not opt in), the policies' own decision ladder
skips, as the engine does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from webhook.manifests.revisions import entries

API_VERSION: Final = "admissionregistration.k8s.io/v1"


def binding_name(policy: str, entry: str) -> str:
    """A binding's name: the policy's (revision-suffixed) name and the entry's."""
    return f"{policy}-{entry}"


def render_bindings(
    policy: str,
    *,
    revision: str,
    tags: Sequence[str],
    excluded: Sequence[str],
    labels: Mapping[str, str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The mutating and the validating bindings of ``policy`` (named ``policy``)."""
    mutating, validating = [], []
    for entry in entries(revision, tags, excluded):
        resources = {
            "namespaceSelector": dict(entry.namespace_selector),
            "objectSelector": dict(entry.object_selector),
        }
        meta = {"name": binding_name(policy, entry.entry), "labels": dict(labels)}
        mutating.append(
            {
                "apiVersion": API_VERSION,
                "kind": "MutatingAdmissionPolicyBinding",
                "metadata": meta,
                "spec": {"policyName": policy, "matchResources": resources},
            }
        )
        validating.append(
            {
                "apiVersion": API_VERSION,
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": meta,
                "spec": {
                    "policyName": policy,
                    "validationActions": ["Deny"],
                    "matchResources": resources,
                },
            }
        )
    return mutating, validating
