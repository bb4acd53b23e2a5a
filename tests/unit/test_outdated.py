"""Outdated sidecars (``webhook.ops.outdated``): what a status annotation records, what
would be injected now, why a pod is outdated, and the workload to restart.

Pure rules over plain dicts; ``check``'s pod scan that applies them is tested in
``tests/unit/check/test_discover_pods.py`` and against a misbehaving server in
``tests/unit/check/test_bounds.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.builders import enabled_namespace, namespace, pod
from webhook import __version__
from webhook.engine.config import InjectorConfig
from webhook.ops.outdated import (
    Expected,
    Recorded,
    StatusUnreadable,
    Workload,
    expected,
    owning_workload,
    recorded,
    staleness,
)


def test_the_status_annotation_is_read_or_refused() -> None:
    status = "sidecar.mesh.io/status"
    assert recorded({}) is None
    assert recorded({status: '{"version": "0.1.0"}'}) == Recorded("0.1.0", None)
    assert recorded({status: '{"version": "0.1.0", "digest": "sha256:ab"}'}) == Recorded(
        "0.1.0", "sha256:ab"
    )
    for bad in ("not json", "[]", "{}", '{"version": 1}', '{"version": "1", "digest": 3}'):
        with pytest.raises(StatusUnreadable):
            recorded({status: bad})


@pytest.mark.parametrize(
    ("found", "now", "digests", "why"),
    [
        (Recorded("0.0.9", "sha256:a"), Expected("0.1.0", "sha256:a"), True, "injected by 0.0.9"),
        (Recorded("0.1.0", "sha256:a"), Expected("0.1.0", "sha256:a"), True, None),
        (Recorded("0.1.0", "sha256:a"), Expected("0.1.0", "sha256:b"), True, "containers differ"),
        (
            Recorded("0.1.0", None),
            Expected("0.1.0", "sha256:b"),
            True,
            "without a container digest",
        ),
        # Digests not trusted (another build computes them): only the version counts.
        (Recorded("0.1.0", "sha256:a"), Expected("0.1.0", "sha256:b"), False, None),
        (Recorded("0.0.9", "sha256:a"), Expected("0.1.0", "sha256:b"), False, "injected by 0.0.9"),
        # The engine writes no digest: nothing to compare it with.
        (Recorded("0.1.0", None), Expected("0.1.0", None), True, None),
        # Not injected now (namespace opted out): not outdated, counted apart.
        (Recorded("0.1.0", "sha256:a"), Expected(skip="would not be injected now"), True, None),
    ],
)
def test_a_sidecar_is_outdated_by_version_or_digest(
    found: Recorded, now: Expected, digests: bool, why: str | None
) -> None:
    reason = staleness(found, now, version="0.1.0", digests=digests)
    if why is None:
        assert reason is None
    else:
        assert reason is not None
        assert why in reason


def _pod(name: str, *owners: dict[str, Any]) -> dict[str, Any]:
    return pod(name, namespace="shop", ownerReferences=list(owners))


def _owner(kind: str, name: str, *, controller: bool = True) -> dict[str, Any]:
    return {"kind": kind, "name": name, "controller": controller}


def test_outdated_pods_are_grouped_by_the_workload_to_restart() -> None:
    parents = {
        ("shop", "ReplicaSet", "web-7d9f"): ("Deployment", "web"),
        ("shop", "Job", "report-28"): ("CronJob", "report"),
    }
    asked: list[tuple[str, str, str]] = []

    def lookup(namespace: str, kind: str, name: str) -> tuple[str, str] | None:
        asked.append((namespace, kind, name))
        return parents.get((namespace, kind, name))

    cases = {
        "web-7d9f-x": _pod("web-7d9f-x", _owner("ReplicaSet", "web-7d9f")),
        "report-28-y": _pod("report-28-y", _owner("Job", "report-28")),
        "db-0": _pod("db-0", _owner("StatefulSet", "db")),
        "agent-z": _pod("agent-z", _owner("DaemonSet", "agent")),
        "lone": _pod("lone"),
        "orphan-rs-q": _pod("orphan-rs-q", _owner("ReplicaSet", "orphan-rs")),
        "batch-1": _pod("batch-1", _owner("Job", "batch")),
        "custom-0": _pod("custom-0", _owner("Rollout", "r", controller=False)),
    }
    workloads = {name: owning_workload(obj, lookup) for name, obj in cases.items()}
    assert workloads == {
        "web-7d9f-x": Workload("shop", "Deployment", "web"),
        "report-28-y": Workload("shop", "CronJob", "report"),
        "db-0": Workload("shop", "StatefulSet", "db"),
        "agent-z": Workload("shop", "DaemonSet", "agent"),
        "lone": Workload("shop", "Pod", "lone"),
        "orphan-rs-q": Workload("shop", "ReplicaSet", "orphan-rs"),
        "batch-1": Workload("shop", "Job", "batch"),
        "custom-0": Workload("shop", "Rollout", "r"),
    }
    # Only ReplicaSets and Jobs have a parent worth looking up.
    assert {kind for _, kind, _ in asked} == {"ReplicaSet", "Job"}
    restarts = {name: w.restart() for name, w in workloads.items()}
    assert restarts["web-7d9f-x"] == "kubectl rollout restart -n shop deployment/web"
    assert restarts["db-0"] == "kubectl rollout restart -n shop statefulset/db"
    assert restarts["agent-z"] == "kubectl rollout restart -n shop daemonset/agent"
    assert "next Job" in restarts["report-28-y"]
    assert "re-create pod lone" in restarts["lone"]
    assert "ReplicaSet orphan-rs re-creates them" in restarts["orphan-rs-q"]


def test_what_would_be_injected_now_follows_namespace_and_pod_settings() -> None:
    config = InjectorConfig()
    plain = expected(enabled_namespace("shop"), {}, config)
    assert plain.version == __version__
    assert not plain.skip
    # PodSecurity is the pod-security check's business, not a reason to skip here.
    strict = expected(
        enabled_namespace("strict", **{"pod-security.kubernetes.io/enforce": "restricted"}),
        {},
        config,
    )
    assert not strict.skip
    assert strict.digest == plain.digest
    disabled = expected(namespace("off", {"sidecar-injection": "disabled"}), {}, config)
    assert "would not be injected now" in disabled.skip
    refused = expected(namespace("shop"), {"sidecar.mesh.io/proxy-cpu-request": "lots"}, config)
    assert "would be refused now" in refused.skip
    excluded = expected(namespace("kube-system"), {}, config)
    assert excluded.skip


def test_the_digest_changes_with_a_setting() -> None:
    config = InjectorConfig()
    shop = enabled_namespace("shop")
    default = expected(shop, {}, config)
    assert default.digest is not None
    assert default.digest.startswith("sha256:")
    debug = expected(shop, {"sidecar.mesh.io/log-level": "debug"}, config)
    assert debug.digest != default.digest
    again = expected(shop, {"sidecar.mesh.io/log-level": "debug"}, config)
    assert again.digest == debug.digest
