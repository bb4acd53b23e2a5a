"""manifests/policy: the four objects of policy mode, as ``sidecar-injector policy`` prints them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "manifests" / "policy"
CONFIG = ROOT / "manifests" / "base" / "injector-config.yaml"
CLI = str(Path(sys.executable).parent / "sidecar-injector")


def test_the_committed_policy_is_what_the_cli_prints_for_the_install_config() -> None:
    printed = subprocess.run(
        [CLI, "policy", "--config", str(CONFIG)], capture_output=True, text=True, check=True
    ).stdout
    committed = (POLICY / "policy.yaml").read_text(encoding="utf-8")
    assert committed == printed, "manifests/policy/policy.yaml is stale: run make policy-manifests"


def test_the_kustomization_installs_the_policies_and_bindings_and_nothing_of_the_webhook() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(POLICY)], capture_output=True, text=True, check=True
    ).stdout
    objects = [obj for obj in yaml.safe_load_all(rendered) if obj]
    entries = ["namespace", "object", "rev-pod", "rev-namespace"]
    # kustomize orders the objects by kind and name.
    assert sorted((obj["kind"], obj["metadata"]["name"]) for obj in objects) == sorted(
        [
            ("MutatingAdmissionPolicy", "sidecar-injector"),
            *(("MutatingAdmissionPolicyBinding", f"sidecar-injector-{e}") for e in entries),
            ("ValidatingAdmissionPolicy", "sidecar-injector"),
            *(("ValidatingAdmissionPolicyBinding", f"sidecar-injector-{e}") for e in entries),
        ]
    )

    def by_name(items: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(o["kind"], o["metadata"]["name"]): o for o in items}

    shipped = list(yaml.safe_load_all((POLICY / "policy.yaml").read_text()))
    assert by_name(objects) == by_name(shipped)
