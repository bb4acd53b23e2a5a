"""matchConditions keep the API server from calling the injector for pods it would skip anyway.

Pods that say so themselves (host network, Windows, a mirror pod's annotation,
opted out by label or by annotation, already injected) are created in a
namespace the default revision serves. The API server's own metrics show each
one excluded by the namespace webhook's matchConditions
(``apiserver_admission_match_condition_exclusions_total``) and no call to it
(``apiserver_admission_webhook_request_total``); the injector's ``/mutate``
counter and its decisions do not move. A plain pod next to them is called for
and injected, which shows the counters would have moved.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness.kube.control_plane import ControlPlane
from harness.kube.install import pod_manifest as pod
from harness.kube.revision_install import apiserver_admission
from tests.e2e.revisions.shared import (
    EFFECT_TIMEOUT,
    ENABLED,
    INJECT,
    Namespaces,
    Revisions,
    api,
    injected_by,
)

pytestmark = pytest.mark.cluster

WEBHOOK = "namespace.sidecar.mesh.io"
STATUS = json.dumps({"version": "0.1.0", "initContainers": ["mesh-init", "mesh-proxy"]})

# name -> (labels, annotations, spec): each skipped for what the pod itself says.
SKIPPED: dict[str, tuple[dict[str, str], dict[str, str], dict[str, Any]]] = {
    "host-network": ({}, {}, {"hostNetwork": True}),
    "windows": ({}, {}, {"os": {"name": "windows"}}),
    "mirror": ({}, {"kubernetes.io/config.mirror": "abc"}, {"nodeName": "node-1"}),
    "out-by-annotation": ({}, {INJECT: "false"}, {}),
    "out-by-annotation-junk-label": ({INJECT: "maybe"}, {INJECT: "false"}, {}),
    "already-injected": (
        {},
        {"sidecar.mesh.io/status": STATUS},
        {
            "initContainers": [
                {"name": "mesh-init", "image": "registry.invalid/init:1"},
                {
                    "name": "mesh-proxy",
                    "image": "registry.invalid/proxy:1",
                    "restartPolicy": "Always",
                },
            ]
        },
    ),
}


def test_pods_that_say_they_are_skipped_never_reach_the_injector(
    control_plane: ControlPlane, revisions: Revisions, namespaces: Namespaces
) -> None:
    revisions.install({"default": []})
    namespace = namespaces.create("conditions", ENABLED)
    cluster = api(control_plane)
    control_plane.wait_for(
        lambda: (
            injected_by(cluster.dry_run_pod(namespace, pod("probe"), field_manager="e2e"))
            == "default"
        ),
        what="the default revision injecting",
        timeout=EFFECT_TIMEOUT,
    )
    default = revisions.by_name["default"]
    injector_before = default.metrics()
    api_before = apiserver_admission(control_plane)
    for name, (labels, notes, spec) in SKIPPED.items():
        stored = cluster.dry_run_pod(
            namespace, pod(name, labels=labels, annotations=notes, spec=spec),
            field_manager="e2e",
        )  # fmt: skip
        assert injected_by(stored) in (None, "default"), name
        if name != "already-injected":
            assert injected_by(stored) is None, name
    api_after = apiserver_admission(control_plane)
    injector_after = default.metrics()
    assert api_after.get(("exclusions", WEBHOOK), 0) - api_before.get(
        ("exclusions", WEBHOOK), 0
    ) == len(SKIPPED)
    assert api_after.get(("requests", WEBHOOK), 0) == api_before.get(("requests", WEBHOOK), 0)
    assert injector_after.mutate_calls() == injector_before.mutate_calls()
    assert injector_after.decisions == injector_before.decisions  # never counted

    # The control: a plain pod is sent and injected, and every counter says so.
    stored = cluster.dry_run_pod(namespace, pod("plain"), field_manager="e2e")
    assert injected_by(stored) == "default"
    assert (
        apiserver_admission(control_plane)[("requests", WEBHOOK)]
        == api_after.get(("requests", WEBHOOK), 0) + 1
    )
    control = default.metrics()
    assert control.mutate_calls() == injector_after.mutate_calls() + 1
    assert control.decided("namespace-enabled") == injector_after.decided("namespace-enabled") + 1


def test_an_annotation_opt_in_in_an_unlabelled_namespace_reaches_the_injector(
    control_plane: ControlPlane, revisions: Revisions, namespaces: Namespaces
) -> None:
    revisions.install({"default": []})
    namespace = namespaces.create("annotated")
    cluster = api(control_plane)
    opted = pod("opted", annotations={INJECT: "true"})
    control_plane.wait_for(
        lambda: (
            injected_by(cluster.dry_run_pod(namespace, opted, field_manager="e2e")) == "default"
        ),
        what="an annotation opt-in reaching the default revision",
        timeout=EFFECT_TIMEOUT,
    )
    before = apiserver_admission(control_plane)
    plain = cluster.dry_run_pod(namespace, pod("plain"), field_manager="e2e")
    assert injected_by(plain) is None
    after = apiserver_admission(control_plane)
    # Selected by the object webhook's selectors, excluded by its opt-in condition.
    assert (
        after[("exclusions", "object.sidecar.mesh.io")]
        == before.get(("exclusions", "object.sidecar.mesh.io"), 0) + 1
    )
    assert after.get(("requests", "object.sidecar.mesh.io"), 0) == before.get(
        ("requests", "object.sidecar.mesh.io"), 0
    )
