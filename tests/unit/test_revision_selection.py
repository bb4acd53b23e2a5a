"""Exactly one injector sees each pod, whatever mix of revisions and tags is installed.

The entries of ``webhook.manifests.revisions`` are evaluated as the API server
evaluates them (selectors; the matchConditions by their Python twins, which
the e2e tests hold to the CEL) over generated namespaces, pods and installs,
and compared with the engine's decision: a pod the engine injects reaches the
one revision its labels name, and a pod it skips reaches none, or one whose
injector skips it for a reason no selector can see (the namespace's labels
as the webhook's cache has them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.profiles import examples
from webhook.contract import constants
from webhook.contract.namespaces import NamespaceInfo
from webhook.engine import decide
from webhook.engine.config import InjectorConfig
from webhook.manifests import revisions

EXCLUDED = list(constants.DEFAULT_EXCLUDED_NAMESPACES)
REVISION_NAMES = ("default", "canary", "stable")
TAG_NAMES = ("prod", "next")
REV_VALUES = (*REVISION_NAMES, *TAG_NAMES, "gone", "")
STATUS = json.dumps({"version": "0.1.0", "initContainers": ["mesh-init", "mesh-proxy"]})


@st.composite
def installs(draw: st.DrawFn) -> dict[str, list[str]]:
    """Installed revisions (at least one), each tag on at most one of them."""
    installed = draw(st.lists(st.sampled_from(REVISION_NAMES), min_size=1, unique=True))
    tags: dict[str, list[str]] = {name: [] for name in installed}
    for tag in TAG_NAMES:
        owner = draw(st.sampled_from([None, *installed]))
        if owner is not None:
            tags[owner].append(tag)
    return tags


def _maybe(values: tuple[str, ...]) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), st.sampled_from(values))


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(namespace name, its labels, a pod) with every label and annotation that decides."""
    name = draw(st.sampled_from(["demo", "kube-system", "mesh-system"]))
    namespace_labels = {revisions.NAME_LABEL: name}
    injection = draw(_maybe(("enabled", "disabled", "maybe")))
    if injection is not None:
        namespace_labels[constants.NAMESPACE_INJECTION_LABEL] = injection
    namespace_rev = draw(_maybe(REV_VALUES))
    if namespace_rev is not None:
        namespace_labels[constants.REVISION_LABEL] = namespace_rev
    labels: dict[str, str] = {"app": "web"}
    annotations: dict[str, str] = {}
    for where in (labels, annotations):
        choice = draw(_maybe(("true", "false", "no")))
        if choice is not None:
            where[constants.INJECT_KEY] = choice
    pod_rev = draw(_maybe(REV_VALUES))
    if pod_rev is not None:
        labels[constants.REVISION_LABEL] = pod_rev
    spec: dict[str, Any] = {"containers": [{"name": "app"}]}
    if draw(st.integers(0, 9)) == 0:
        spec["hostNetwork"] = True
    if draw(st.integers(0, 9)) == 0:
        spec["os"] = {"name": "windows"}
    if draw(st.integers(0, 9)) == 0:
        annotations[constants.MIRROR_POD_ANNOTATION] = "x"
    if draw(st.integers(0, 9)) == 0:
        # Already injected, as native mode leaves a pod.
        annotations[constants.STATUS_ANNOTATION] = STATUS
        spec["initContainers"] = [{"name": "mesh-init"}, {"name": "mesh-proxy"}]
    pod = {"metadata": {"labels": labels, "annotations": annotations}, "spec": spec}
    return name, namespace_labels, pod


def _seen_by(
    install: Mapping[str, list[str]], pod: Mapping[str, Any], namespace_labels: Mapping[str, str]
) -> list[str]:
    return [
        revision
        for revision, tags in install.items()
        for entry in revisions.entries(revision, tags, EXCLUDED)
        if revisions.sees(entry, pod, namespace_labels)
    ]


def _serving(
    install: Mapping[str, list[str]], pod: Mapping[str, Any], namespace_labels: Mapping[str, str]
) -> str | None:
    """The revision the contract says serves the pod, if it is installed."""
    value = pod["metadata"]["labels"].get(constants.REVISION_LABEL)
    if value is None:
        value = namespace_labels.get(constants.REVISION_LABEL, constants.DEFAULT_REVISION)
    for revision, tags in install.items():
        if value == revision or value in tags:
            return revision
    return None


@settings(max_examples=examples(1000))
@given(install=installs(), case=cases())
def test_exactly_one_injector_sees_each_pod_the_engine_injects_and_none_other(
    install: dict[str, list[str]], case: tuple[str, dict[str, str], dict[str, Any]]
) -> None:
    name, namespace_labels, pod = case
    seen = _seen_by(install, pod, namespace_labels)
    assert len(seen) <= 1, (seen, install, namespace_labels, pod)
    namespace = NamespaceInfo(name, MappingProxyType(namespace_labels))
    decision = decide(pod["metadata"], pod["spec"], namespace=namespace, config=InjectorConfig())
    serving = _serving(install, pod, namespace_labels)
    if decision.inject and serving is not None:
        # Injected by the revision its labels name, and no other.
        assert seen == [serving], (decision, install, namespace_labels, pod)
    elif seen:
        # Only a pod the engine would inject is ever sent (nothing it skips
        # for what the pod or its namespace's labels say reaches an injector).
        raise AssertionError(f"{seen} sees a pod the engine skips: {decision}, {pod}")


def test_a_revision_answers_to_its_name_and_its_tags_only() -> None:
    canary = revisions.entries("canary", ["prod"], EXCLUDED)
    assert [e.entry for e in canary] == ["rev-pod", "rev-namespace"]
    for entry in canary:
        values = revisions.revision_values(entry.object_selector) or revisions.revision_values(
            entry.namespace_selector
        )
        assert values == ["canary", "prod"]
    default = revisions.entries("default", ["prod"], EXCLUDED)
    assert [e.entry for e in default] == ["namespace", "object", "rev-pod", "rev-namespace"]
    assert revisions.revision_values(default[2].object_selector) == ["default", "prod"]


def test_a_tag_moves_by_its_values_alone() -> None:
    entry = revisions.entries("canary", [], EXCLUDED)[1]
    moved = revisions.with_values(entry.namespace_selector, ["canary", "prod"])
    assert revisions.revision_values(moved) == ["canary", "prod"]
    assert revisions.revision_values(entry.namespace_selector) == ["canary"]  # not changed
    assert [e["key"] for e in moved["matchExpressions"]] == [
        e["key"] for e in entry.namespace_selector["matchExpressions"]
    ]


def test_object_names_carry_the_revision_as_a_suffix() -> None:
    assert revisions.object_name("default") == "sidecar-injector"
    assert revisions.object_name("canary") == "sidecar-injector-canary"
    assert revisions.object_name("canary", "sidecar-injector-tls") == "sidecar-injector-tls-canary"
    assert revisions.webhook_name("rev-pod", "default") == "rev-pod.sidecar.mesh.io"
    assert revisions.webhook_name("rev-pod", "canary") == "rev-pod.canary.sidecar.mesh.io"
