"""The contract's decision order as a table: first match wins."""

from __future__ import annotations

import subprocess
import sys
from types import MappingProxyType
from typing import Any

import pytest

from webhook.config import InjectorConfig
from webhook.engine import decide
from webhook.preview import AssumedNamespace

ENABLED = {"sidecar-injection": "enabled"}
DISABLED = {"sidecar-injection": "disabled"}
OPT_IN = {"sidecar.mesh.io/inject": "true"}
OPT_OUT = {"sidecar.mesh.io/inject": "false"}
STATUS = {"sidecar.mesh.io/status": "{}"}
MIRROR = {"kubernetes.io/config.mirror": "x"}

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
    ("demo", ENABLED, OPT_IN, STATUS, {}, "already-injected", False),  # 5 before 7
    ("kube-system", ENABLED, OPT_IN, {}, {}, "excluded-namespace", False),  # 4 before 5
    ("mesh-system", ENABLED, {}, {}, {}, "excluded-namespace", False),
    ("kube-public", ENABLED, {}, {}, {}, "excluded-namespace", False),
    ("kube-node-lease", ENABLED, {}, {}, {}, "excluded-namespace", False),
    ("kube-system", ENABLED, {}, MIRROR, {}, "mirror-pod", False),  # 3 before 4
    ("demo", ENABLED, OPT_IN, MIRROR, {"hostNetwork": True}, "host-network", False),  # 2 first
    ("demo", ENABLED, {}, {}, {"hostNetwork": False}, "namespace-enabled", True),
]


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
        namespace=AssumedNamespace(namespace, MappingProxyType(ns_labels)),
        config=InjectorConfig(),
    )
    assert (decision.code, decision.inject) == (code, inject)
    assert decision.reason


def test_the_excluded_namespaces_come_from_the_config() -> None:
    config = InjectorConfig(excluded_namespaces=("platform",))
    decision = decide(
        {}, {}, namespace=AssumedNamespace("platform", MappingProxyType(ENABLED)), config=config
    )
    assert decision.code == "excluded-namespace"
    decision = decide(
        {}, {}, namespace=AssumedNamespace("kube-system", MappingProxyType(ENABLED)), config=config
    )
    assert decision.code == "namespace-enabled"


def test_the_engine_imports_neither_fastapi_nor_kubernetes() -> None:
    # A fresh interpreter: the test process itself has imported everything.
    probe = (
        "import sys, webhook.engine, webhook.preview, webhook.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'fastapi', 'starlette', 'kubernetes', 'uvicorn'})\n"
        "print(','.join(bad))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == ""
