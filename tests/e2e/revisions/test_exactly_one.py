"""Exactly one injector sees each pod, for every mix of installed revisions, on the real API server.

Every combination of the labels and annotations that decide (the namespace's
``sidecar-injection`` and ``sidecar.mesh.io/rev``, the pod's ``rev`` label and
its ``inject`` label or annotation, and a few skips the pod itself states) is
created as a server-side dry-run pod under mixes of the three revisions and
their tags, in webhook mode and with some of them in policy mode. The API
server evaluates the installs' selectors and matchConditions (and the policy
bindings' selectors and the policies' CEL); each pod must come back injected
by exactly the revision the contract names (or by none), and each webhook
revision's process must have answered exactly the pods it injected: none was
called for a pod it skips, or for one another revision injected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from harness.kube.control_plane import ControlPlane
from harness.kube.install import pod_manifest as pod
from tests.e2e.revisions.shared import (
    DISABLED,
    EFFECT_TIMEOUT,
    ENABLED,
    INJECT,
    REV,
    Namespaces,
    Revisions,
    api,
    injected_by,
)
from webhook.cluster.reader import Cluster

pytestmark = pytest.mark.cluster

MIXES: list[dict[str, list[str]]] = [
    {"default": []},
    {"default": [], "canary": ["prod"]},
    {"canary": [], "stable": ["prod"]},
    {"default": ["prod"], "canary": [], "stable": []},
]

NAMESPACE_LABELS: dict[str, dict[str, str]] = {
    "plain": {},
    "enabled": ENABLED,
    "disabled": DISABLED,
    "maybe": {"sidecar-injection": "maybe"},
    "rev-default": {REV: "default"},
    "rev-canary": {REV: "canary"},
    "rev-prod": {REV: "prod"},
    "rev-gone": {REV: "gone"},
    "enabled-canary": {**ENABLED, REV: "canary"},
    "disabled-canary": {**DISABLED, REV: "canary"},
}

# name -> (labels, annotations, spec)
PODS: dict[str, tuple[dict[str, str], dict[str, str], dict[str, Any]]] = {
    "plain": ({}, {}, {}),
    "in-label": ({INJECT: "true"}, {}, {}),
    "in-annotation": ({}, {INJECT: "true"}, {}),
    "out-label": ({INJECT: "false"}, {}, {}),
    "out-annotation": ({}, {INJECT: "false"}, {}),
    "junk-label-out-annotation": ({INJECT: "no"}, {INJECT: "false"}, {}),
    "rev-canary": ({REV: "canary"}, {}, {}),
    "rev-default": ({REV: "default"}, {}, {}),
    "rev-stable-in": ({REV: "stable", INJECT: "true"}, {}, {}),
    "rev-prod": ({REV: "prod"}, {}, {}),
    "rev-gone": ({REV: "gone"}, {}, {}),
    "rev-canary-out": ({REV: "canary"}, {INJECT: "false"}, {}),
    "rev-canary-host-network": ({REV: "canary"}, {}, {"hostNetwork": True}),
    "windows-in": ({INJECT: "true"}, {}, {"os": {"name": "windows"}}),
}


def expected(
    mix: Mapping[str, Sequence[str]],
    namespace: Mapping[str, str],
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    spec: Mapping[str, Any],
) -> str | None:
    """The contract: which installed revision injects this pod, if any."""
    if namespace.get("sidecar-injection") == "disabled":
        return None
    if spec.get("hostNetwork") or (spec.get("os") or {}).get("name") == "windows":
        return None
    label = labels.get(INJECT)
    choice = label if label in ("true", "false") else annotations.get(INJECT)
    if choice == "false":
        return None
    value = labels.get(REV, namespace.get(REV))
    if value is None:
        opted = choice == "true" or namespace.get("sidecar-injection") == "enabled"
        return "default" if opted and "default" in mix else None
    return next((name for name, tags in mix.items() if value == name or value in tags), None)


@pytest.fixture(scope="module")
def made(namespaces: Namespaces, revisions: Revisions) -> dict[str, str]:
    """The namespaces of the matrix, by their key."""
    return {key: namespaces.create(key, labels) for key, labels in NAMESPACE_LABELS.items()}


def _wait_until_installed(
    cluster: Cluster, made: dict[str, str], mix: Mapping[str, Sequence[str]]
) -> None:
    """Until the API server routes a probe pod per revision (and tag) as ``mix`` says."""
    import time

    probes: dict[str, str | None] = {
        value: owner for owner, tags in mix.items() for value in (owner, *tags)
    }
    probes.update({name: None for name in ("default", "canary", "stable") if name not in mix})
    deadline = time.monotonic() + EFFECT_TIMEOUT
    while True:
        seen = {
            value: injected_by(
                cluster.dry_run_pod(
                    made["plain"], pod(f"probe-{value}", labels={REV: value}), field_manager="e2e"
                )
            )
            for value in probes
        }
        if seen == probes:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the API server still routes {seen}, not {probes}")
        time.sleep(0.5)


# Webhook and policy revisions side by side (name -> mode; the others webhook).
MODE_MIXES: list[tuple[dict[str, list[str]], dict[str, str]]] = [
    ({"default": []}, {"default": "policy"}),
    ({"default": [], "canary": ["prod"]}, {"canary": "policy"}),
    ({"canary": [], "stable": ["prod"]}, {"canary": "policy"}),
    ({"default": ["prod"], "canary": [], "stable": []}, {"default": "policy", "stable": "policy"}),
]


def _mode_ids(mix: dict[str, list[str]], modes: dict[str, str]) -> str:
    return "+".join(f"{name}-{modes.get(name, 'webhook')}" for name in mix)


@pytest.mark.parametrize(
    ("mix", "modes"),
    [*((m, {}) for m in MIXES), *MODE_MIXES],
    ids=[*("+".join(m) for m in MIXES), *(_mode_ids(m, modes) for m, modes in MODE_MIXES)],
)
def test_exactly_the_revision_the_contract_names_injects_each_pod_and_no_other_is_called(
    control_plane: ControlPlane,
    revisions: Revisions,
    made: dict[str, str],
    mix: dict[str, list[str]],
    modes: dict[str, str],
) -> None:
    revisions.install(mix, modes)
    cluster = api(control_plane)
    _wait_until_installed(cluster, made, mix)
    wrong: list[str] = []
    wanted: Counter[str] = Counter()
    before = revisions.mutate_calls()
    for key, namespace in made.items():
        for name, (labels, notes, spec) in PODS.items():
            stored = cluster.dry_run_pod(
                namespace, pod(name, labels=labels, annotations=notes, spec=spec),
                field_manager="e2e",
            )  # fmt: skip
            want = expected(mix, NAMESPACE_LABELS[key], labels, notes, spec)
            got = injected_by(stored)
            if got != want:
                wrong.append(f"{key}/{name}: injected by {got}, want {want}")
            if want is not None and modes.get(want, "webhook") == "webhook":
                wanted[want] += 1
    after = revisions.mutate_calls()
    # Each webhook revision's process answered exactly the pods it injected: no
    # injector was called for a pod it skips, nor for a pod another one (webhook
    # or policy) injected; a policy revision's process is never called.
    called = {r: after[r] - before[r] for r in after if after[r] != before[r]}
    assert not wrong, "\n".join(wrong)
    assert called == dict(wanted)
