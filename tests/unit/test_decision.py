"""The contract's decision order as a table: first match wins."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import jsonpatch
import pytest

from webhook.cluster.namespaces_file import NamespaceInfo
from webhook.engine import (
    LABEL_FREE_SKIPS,
    LABEL_SKIPS,
    InjectionRefused,
    InjectionStatus,
    StatusError,
    decide,
    inject,
    uninject,
)
from webhook.engine.config import InjectorConfig
from webhook.engine.status import MAX_STATUS_CHARS
from webhook.manifests.patched import patched

ENABLED = {"sidecar-injection": "enabled"}
DISABLED = {"sidecar-injection": "disabled"}
OPT_IN = {"sidecar.mesh.io/inject": "true"}
OPT_OUT = {"sidecar.mesh.io/inject": "false"}
INVALID = {"sidecar.mesh.io/inject": "no"}
MIRROR = {"kubernetes.io/config.mirror": "x"}
WINDOWS = {"os": {"name": "windows"}}
REV = {"sidecar.mesh.io/rev": "canary"}


def status(containers: list[str], init: list[str], **extra: Any) -> dict[str, str]:
    value = {"version": "0", "containers": containers, "initContainers": init, **extra}
    return {"sidecar.mesh.io/status": json.dumps(value)}


STATUS = status(["mesh-proxy"], ["mesh-init"])
NATIVE_STATUS = status([], ["mesh-init", "mesh-proxy"])
# The pod as a classic-mode injection left it; and as native mode left it.
INJECTED = {
    "initContainers": [{"name": "mesh-init"}],
    "containers": [{"name": "app"}, {"name": "mesh-proxy"}],
}
NATIVE_INJECTED = {"initContainers": [{"name": "mesh-init"}, {"name": "mesh-proxy"}]}

# (namespace, namespace labels, pod labels, pod annotations, spec extras, code, inject)
TABLE: list[
    tuple[str, dict[str, str], dict[str, str], dict[str, str], dict[str, Any], str, bool]
] = [
    ("demo", ENABLED, {}, {}, {}, "namespace-enabled", True),
    ("demo", {}, {}, {}, {}, "not-enabled", False),
    ("demo", {"sidecar-injection": "yes"}, {}, {}, {}, "not-enabled", False),
    ("demo", {}, OPT_IN, {}, {}, "pod-opted-in", True),
    ("demo", {}, {}, OPT_IN, {}, "pod-opted-in", True),
    ("demo", ENABLED, OPT_OUT, {}, {}, "pod-opted-out", False),
    ("demo", ENABLED, {}, OPT_OUT, {}, "pod-opted-out", False),
    ("demo", ENABLED, OPT_OUT, OPT_IN, {}, "pod-opted-out", False),  # the label wins
    ("demo", {}, OPT_IN, OPT_OUT, {}, "pod-opted-in", True),  # the label wins
    ("demo", DISABLED, OPT_IN, {}, {}, "namespace-disabled", False),  # 6 before 7
    ("demo", ENABLED, OPT_IN, STATUS, INJECTED, "already-injected", False),  # 5 before 7
    ("demo", DISABLED, {}, STATUS, INJECTED, "already-injected", False),  # 5 before 6
    ("demo", ENABLED, {}, NATIVE_STATUS, NATIVE_INJECTED, "already-injected", False),
    # Step 5: a status whose containers are missing (copied metadata) does not count.
    ("demo", ENABLED, {}, STATUS, {}, "namespace-enabled", True),
    ("demo", ENABLED, {}, NATIVE_STATUS, {}, "namespace-enabled", True),
    # Either list will do: the rule reads names, not the annotation (CEL cannot parse JSON).
    ("demo", ENABLED, {}, STATUS, NATIVE_INJECTED, "already-injected", False),
    ("demo", ENABLED, {}, STATUS, {"initContainers": [{"name": "mesh-init"}]}, "namespace-enabled", True),
    ("demo", ENABLED, {}, STATUS, {"containers": [{"name": "mesh-proxy"}]}, "namespace-enabled", True),
    ("demo", {}, OPT_IN, STATUS, {}, "pod-opted-in", True),
    ("demo", {}, {}, STATUS, {}, "not-enabled", False),
    # With both containers present, any status annotation counts, whatever it says
    # (uninject, which must read it, refuses one it cannot: test below).
    ("demo", ENABLED, {}, {"sidecar.mesh.io/status": "{not json"}, INJECTED, "already-injected", False),
    ("demo", ENABLED, {}, {"sidecar.mesh.io/status": "{}"}, INJECTED, "already-injected", False),
    ("demo", ENABLED, {}, {"sidecar.mesh.io/status": ""}, INJECTED, "already-injected", False),
    ("demo", ENABLED, {}, status([], []), INJECTED, "already-injected", False),
    ("demo", ENABLED, {}, status(["mesh-proxy"], ["mesh-init"], pad="x" * MAX_STATUS_CHARS), INJECTED, "already-injected", False),
    # ... and none without them, whatever it says.
    ("demo", ENABLED, {}, {"sidecar.mesh.io/status": "{not json"}, {}, "namespace-enabled", True),
    ("demo", ENABLED, {}, status([], []), {}, "namespace-enabled", True),
    # An earlier build's annotation (no digest, no annotations list) counts.
    ("demo", ENABLED, {}, {"sidecar.mesh.io/status": '{"containers":["mesh-proxy"],"initContainers":["mesh-init"],"volumes":[],"version":"0.1.0"}'}, INJECTED, "already-injected", False),
    # Step 7: an invalid label value is ignored and the annotation decides.
    ("demo", ENABLED, INVALID, OPT_OUT, {}, "pod-opted-out", False),
    ("demo", {}, INVALID, OPT_IN, {}, "pod-opted-in", True),
    ("demo", ENABLED, INVALID, {}, {}, "namespace-enabled", True),
    ("demo", {}, INVALID, {}, {}, "not-enabled", False),
    ("demo", ENABLED, OPT_OUT, INVALID, {}, "pod-opted-out", False),
    ("demo", {}, INVALID, INVALID, {}, "not-enabled", False),
    ("demo", ENABLED, {"sidecar.mesh.io/inject": "False"}, OPT_OUT, {}, "pod-opted-out", False),
    # Step 2: Windows pods.
    ("demo", ENABLED, {}, {}, WINDOWS, "windows-pod", False),
    ("demo", ENABLED, OPT_IN, {}, WINDOWS, "windows-pod", False),
    ("kube-system", ENABLED, {}, MIRROR, WINDOWS, "windows-pod", False),  # 2 before 3 and 4
    ("demo", ENABLED, {}, {}, {"os": {"name": "linux"}}, "namespace-enabled", True),
    ("demo", ENABLED, {}, {}, {"os": None}, "namespace-enabled", True),
    ("kube-system", ENABLED, OPT_IN, {}, {}, "excluded-namespace", False),  # 4 before 5
    ("mesh-system", ENABLED, {}, {}, {}, "excluded-namespace", False),
    ("kube-public", ENABLED, {}, {}, {}, "excluded-namespace", False),
    ("kube-node-lease", ENABLED, {}, {}, {}, "excluded-namespace", False),
    ("kube-system", ENABLED, {}, MIRROR, {}, "mirror-pod", False),  # 3 before 4
    ("demo", ENABLED, OPT_IN, MIRROR, {"hostNetwork": True}, "host-network", False),  # 2 first
    ("demo", ENABLED, {}, {}, {"hostNetwork": True, **WINDOWS}, "host-network", False),
    ("demo", ENABLED, {}, {}, {"hostNetwork": False}, "namespace-enabled", True),
    # Step 8: a rev label opts in and picks the revision, the pod's over the
    # namespace's, both over sidecar-injection=enabled; everything before
    # step 8 (disabled, the opt-outs, exclusions) still wins.
    ("demo", {}, REV, {}, {}, "pod-revision", True),
    ("demo", REV, {}, {}, {}, "namespace-revision", True),
    ("demo", {**ENABLED, **REV}, {}, {}, {}, "namespace-revision", True),
    ("demo", ENABLED, REV, {}, {}, "pod-revision", True),
    ("demo", REV, {"sidecar.mesh.io/rev": "default"}, {}, {}, "pod-revision", True),
    ("demo", {}, {"sidecar.mesh.io/rev": ""}, {}, {}, "pod-revision", True),  # present, if empty
    ("demo", {**DISABLED, **REV}, {}, {}, {}, "namespace-disabled", False),
    ("demo", DISABLED, REV, {}, {}, "namespace-disabled", False),
    ("demo", REV, OPT_OUT, {}, {}, "pod-opted-out", False),
    ("demo", REV, {}, OPT_OUT, {}, "pod-opted-out", False),
    ("demo", {}, {**REV, **OPT_OUT}, {}, {}, "pod-opted-out", False),
    ("demo", REV, OPT_IN, {}, {}, "pod-opted-in", True),
    ("demo", REV, {}, {}, {"hostNetwork": True}, "host-network", False),
    ("kube-system", REV, REV, {}, {}, "excluded-namespace", False),
    ("demo", REV, {}, STATUS, INJECTED, "already-injected", False),
    ("demo", {}, REV, {"sidecar.mesh.io/status": "{}"}, INJECTED, "already-injected", False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("namespace", "ns_labels", "labels", "annotations", "spec", "code", "inject"), TABLE
)
def test_decision_matrix(
    namespace: str,
    ns_labels: dict[str, str],
    labels: dict[str, str],
    annotations: dict[str, str],
    spec: dict[str, Any],
    code: str,
    inject: bool,
) -> None:
    decision = decide(
        {"labels": labels, "annotations": annotations},
        {"containers": [{"name": "app"}], **spec},
        namespace=NamespaceInfo(namespace, MappingProxyType(ns_labels)),
        config=InjectorConfig(),
    )
    assert (decision.code, decision.inject) == (code, inject)
    assert decision.reason
    # Admission gives a label-free skip without reading a namespace it has not
    # cached: no labels may turn it into an injection, nor one into it.
    assert code in LABEL_FREE_SKIPS | LABEL_SKIPS | {
        "namespace-enabled",
        "pod-opted-in",
        "pod-revision",
        "namespace-revision",
    }
    for other in ({}, ENABLED, DISABLED, {"sidecar-injection": "yes"}):
        relabelled = decide(
            {"labels": labels, "annotations": annotations},
            {"containers": [{"name": "app"}], **spec},
            namespace=NamespaceInfo(namespace, MappingProxyType(other)),
            config=InjectorConfig(),
        )
        if code in LABEL_FREE_SKIPS or relabelled.code in LABEL_FREE_SKIPS:
            assert not relabelled.inject, (code, relabelled.code, other)
            assert not inject, (code, relabelled.code, other)


# Pods as any client may send them: a status annotation, and lists that are not lists.
CLIENT_SHAPED = [
    pytest.param({"initContainers": 7}, "spec.initContainers is not a list", id="initContainers: 7"),
    pytest.param({"containers": 1}, "spec.containers is missing or empty", id="containers: 1"),
    pytest.param({"containers": {"name": "mesh-proxy"}}, "spec.containers is missing or empty", id="containers: a map"),
    pytest.param({"initContainers": [{"name": ["mesh-init"]}]}, "spec.initContainers[0] has no name", id="a list as a name"),
    pytest.param({"initContainers": [{"name": {"a": 1}}]}, "spec.initContainers[0] has no name", id="a map as a name"),
    pytest.param({"initContainers": [7, None]}, "spec.initContainers[0] is not an object", id="items not objects"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "refusal"), CLIENT_SHAPED)
def test_a_status_annotation_on_a_client_shaped_pod_is_decided_and_refused_cleanly(
    spec: dict[str, Any], refusal: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "annotations": NATIVE_STATUS},
        "spec": {"containers": [{"name": "app", "image": "nginx"}], **spec},
    }
    namespace = NamespaceInfo("demo", MappingProxyType(ENABLED))
    assert decide(pod["metadata"], pod["spec"], namespace=namespace, config=InjectorConfig()) == (
        decide({}, {}, namespace=namespace, config=InjectorConfig())
    ), "the listed containers are not there: not already injected"
    with pytest.raises(InjectionRefused) as caught:
        inject(pod, namespace=namespace, config=InjectorConfig())
    assert str(caught.value) == f"Pod web: {refusal}"


STATUS_VALUES = [
    json.dumps({"version": "0", "containers": ["mesh-proxy"], "initContainers": ["mesh-init"]}),
    '{"containers":["mesh-proxy"],"initContainers":["mesh-init"],"volumes":[],"version":"0.1.0"}',
    json.dumps({"version": "0", "containers": ["mesh-proxy"], "digest": 5}),
    json.dumps({"version": 1, "containers": ["mesh-proxy"]}),
    json.dumps({"containers": ["mesh-proxy"], "initContainers": ["mesh-init"]}),
    json.dumps({"version": "0", "initContainers": ["mesh-init"], "wasEmpty": ["spec"]}),
    json.dumps({"version": "0", "initContainers": ["mesh-init"], "replaced": 1}),
    json.dumps({"version": "0", "initContainers": "mesh-init"}),
    json.dumps({"version": "0", "initContainers": ["mesh-init"], "pad": "x" * MAX_STATUS_CHARS}),
    "{not json",
    "[]",
]


@pytest.mark.parametrize("value", STATUS_VALUES)
def test_decide_reads_names_and_uninject_refuses_a_status_it_cannot_read(value: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "annotations": {"sidecar.mesh.io/status": value}},
        "spec": INJECTED,
    }
    try:
        InjectionStatus.parse(value)
    except StatusError:
        valid = False
    else:
        valid = True
    decision = decide(
        pod["metadata"],
        pod["spec"],
        namespace=NamespaceInfo("demo", MappingProxyType(ENABLED)),
        config=InjectorConfig(),
    )
    # Step 5 reads the containers' names only: the annotation with both present is enough.
    assert decision.code == "already-injected"
    if valid:
        assert uninject(pod).removed
    else:
        with pytest.raises(InjectionRefused, match="not removing anything"):
            uninject(pod)


def test_reasons_say_why() -> None:
    def reason(labels: dict[str, str], annotations: dict[str, str], spec: dict[str, Any]) -> str:
        return decide(
            {"labels": labels, "annotations": annotations},
            {"containers": [{"name": "app"}], **spec},
            namespace=NamespaceInfo("demo", MappingProxyType(ENABLED)),
            config=InjectorConfig(),
        ).reason

    assert "Windows" in reason({}, {}, WINDOWS)
    assert "spec.os.name" in reason({}, {}, WINDOWS)
    ignored = reason(INVALID, OPT_OUT, {})
    assert "annotation sidecar.mesh.io/inject=false" in ignored
    assert "'no' is ignored" in ignored
    long_value = reason({"sidecar.mesh.io/inject": "n" * 5000}, OPT_OUT, {})
    assert len(long_value) < 200
    assert "containers it lists" in reason({}, STATUS, INJECTED)
    assert reason(REV, {}, {}) == "pod label sidecar.mesh.io/rev=canary picks an injector revision"
    assert len(reason({"sidecar.mesh.io/rev": "r" * 5000}, {}, {})) <= 120


def test_the_excluded_namespaces_come_from_the_config() -> None:
    config = InjectorConfig(excluded_namespaces=("platform",))
    decision = decide(
        {}, {}, namespace=NamespaceInfo("platform", MappingProxyType(ENABLED)), config=config
    )
    assert decision.code == "excluded-namespace"
    decision = decide(
        {}, {}, namespace=NamespaceInfo("kube-system", MappingProxyType(ENABLED)), config=config
    )
    assert decision.code == "namespace-enabled"


# --- Pod Security: refuse what the apiserver would reject after us ---------------------

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"containers": [{"name": "web", "image": "nginx"}]},
}
ENFORCE = "pod-security.kubernetes.io/enforce"
ENFORCE_VERSION = "pod-security.kubernetes.io/enforce-version"


def inject_into(labels: dict[str, str], pod: dict[str, Any] = POD) -> Any:
    return inject(
        pod,
        namespace=NamespaceInfo("shop", MappingProxyType(labels)),
        config=InjectorConfig(),
    )


@pytest.mark.parametrize(
    ("labels", "named"),
    [
        ({ENFORCE: "restricted"}, "level 'restricted'"),
        ({ENFORCE: "baseline"}, "level 'baseline'"),
        ({ENFORCE: "baseline", ENFORCE_VERSION: "v1.25"}, "level 'baseline' (version 'v1.25')"),
        ({ENFORCE: "restricted", ENFORCE_VERSION: "latest"}, "(version 'latest')"),
        # Pod Security enforces 'restricted' for a level it cannot parse.
        ({ENFORCE: "Restricted"}, "level 'restricted' (its label value 'Restricted' is not a level)"),
        ({ENFORCE: ""}, "level 'restricted' (its label value '' is not a level)"),
    ],
)  # fmt: skip
def test_a_pod_security_level_that_forbids_mesh_init_refuses_the_pod(
    labels: dict[str, str], named: str
) -> None:
    with pytest.raises(InjectionRefused) as caught:
        inject_into({**ENABLED, **labels})
    message = str(caught.value)
    assert message.startswith("Pod shop/web: namespace shop enforces Pod Security ")
    assert named in message
    assert "NET_ADMIN" in message
    assert "NET_RAW" in message
    assert f"{ENFORCE}=privileged" in message  # the way out
    assert "sidecar.mesh.io/inject=false" in message  # the other way out
    assert "\n" not in message


@pytest.mark.parametrize(
    "labels",
    [
        {ENFORCE: "privileged"},
        {ENFORCE: "privileged", ENFORCE_VERSION: "v1.30"},
        {ENFORCE_VERSION: "v1.30"},  # no level: the cluster's default applies
        {"pod-security.kubernetes.io/warn": "restricted"},  # warn and audit do not reject
        {"pod-security.kubernetes.io/audit": "restricted"},
    ],
)
def test_privileged_or_unset_enforcement_is_injected(labels: dict[str, str]) -> None:
    assert inject_into({**ENABLED, **labels}).injected


def test_a_restricted_namespace_does_not_refuse_pods_that_would_not_be_injected() -> None:
    opted_out = {**POD, "metadata": {**POD["metadata"], "labels": OPT_OUT}}
    assert inject_into({**ENABLED, ENFORCE: "restricted"}, opted_out).decision.code == (
        "pod-opted-out"
    )
    assert inject_into({ENFORCE: "restricted"}).decision.code == "not-enabled"


def test_a_status_annotation_without_its_containers_is_rewritten_by_an_add() -> None:
    copied = {
        **POD,
        "metadata": {**POD["metadata"], "annotations": {**STATUS, "team": "a"}},
    }
    result = inject_into(ENABLED, copied)
    assert result.injected
    status_op = next(op for op in result.patch if op["path"].endswith("sidecar.mesh.io~1status"))
    # RFC 6902: "add" on an existing object member replaces its value; still add-only.
    assert status_op["op"] == "add"
    assert {op["op"] for op in result.patch} == {"add"}
    obj = patched(result)
    assert jsonpatch.apply_patch(copied, list(result.patch)) == obj
    written = json.loads(obj["metadata"]["annotations"]["sidecar.mesh.io/status"])
    spec = obj["spec"]
    names = {c["name"] for c in [*spec["containers"], *(spec.get("initContainers") or [])]}
    assert set(written["containers"]) | set(written["initContainers"]) <= names
    assert obj["metadata"]["annotations"]["team"] == "a"
    # And now it counts: a second pass is a no-op.
    again = inject(
        obj,
        namespace=NamespaceInfo("shop", MappingProxyType(ENABLED)),
        config=InjectorConfig(),
    )
    assert again.decision.code == "already-injected"
    assert not again.injected


def test_an_invalid_inject_value_is_quoted_shortened_in_the_warning() -> None:
    pod = {
        **POD,
        "metadata": {**POD["metadata"], "labels": {"sidecar.mesh.io/inject": "y" * 60_000}},
    }
    (warning,) = inject_into(ENABLED, pod).warnings
    assert "(60000 characters) is ignored (expected true or false)" in warning
    assert len(warning) < 200
