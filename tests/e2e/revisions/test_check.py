"""``check``'s revision lines against the real API server: revisions, labels naming nothing,
sidecars per revision after a namespace moves to a canary."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from harness.kube.control_plane import ControlPlane
from harness.kube.install import create
from harness.kube.install import pod_manifest as pod
from harness.server import CLI
from tests.e2e.revisions.shared import (
    EFFECT_TIMEOUT,
    ENABLED,
    REV,
    Namespaces,
    Revisions,
    api,
    injected_by,
)

pytestmark = pytest.mark.cluster


def check(control_plane: ControlPlane) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    done = subprocess.run(
        [
            CLI, "check", "-o", "json", "--connect", "direct",
            "--kubeconfig", str(control_plane.kubeconfig),
        ],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )  # fmt: skip
    document: dict[str, Any] = json.loads(done.stdout)
    return {c["name"]: c for c in document["checks"]}


def test_check_lists_the_revisions_and_fails_on_a_label_naming_none(
    control_plane: ControlPlane, revisions: Revisions, namespaces: Namespaces
) -> None:
    revisions.install({"default": ["prod"], "canary": []})
    legacy = namespaces.create("legacy", ENABLED)
    shop = namespaces.create("shop", ENABLED)
    namespaces.create("tagged", {REV: "prod"})
    stale = namespaces.create("stale", {REV: "gone"})
    cluster = api(control_plane)
    for namespace in (legacy, shop):
        control_plane.wait_for(
            lambda ns=namespace: (
                injected_by(cluster.dry_run_pod(ns, pod("probe"), field_manager="e2e"))  # type: ignore[misc]
                == "default"
            ),
            what=f"injection in {namespace}",
            timeout=EFFECT_TIMEOUT,
        )
    for namespace in (legacy, shop):
        stored = create(control_plane, namespace, pod("web"))
        assert injected_by(stored) == "default"
    # shop moves to canary by label: its pod keeps the default revision's sidecar until restarted.
    control_plane.kubectl("label", "namespace", shop, f"{REV}=canary")

    checks = check(control_plane)
    found = checks["revisions"]
    assert found["status"] == "pass", found
    assert found["message"] == "2 revisions: canary, default (tags: prod -> default)"
    listing = {r["name"]: r for r in found["data"]["revisions"]}
    assert shop in listing["canary"]["namespaces"]
    assert legacy in listing["default"]["namespaces"]
    assert listing["canary"]["proxyVersion"] == "v1.41.0"
    assert listing["default"]["tags"] == ["prod"]

    labels = checks["revision-labels"]
    assert labels["status"] == "fail", labels
    assert f"namespace {stale} (gone)" in labels["details"]
    assert labels["data"]["values"] == ["gone"]

    sidecars = checks["revision-sidecars"]
    assert sidecars["status"] == "warn", sidecars
    assert sidecars["data"]["outdated"].get("canary") == 1
    assert sidecars["data"]["injected"]["default"] >= 2
    outdated = checks["outdated-sidecars"]
    assert any(
        "injected by revision default, its labels now pick canary" in reason
        for workload in outdated["data"]["workloads"]
        for reason in workload["reasons"]
    ), outdated
