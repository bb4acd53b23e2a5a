"""manifests/policy: the four objects of policy mode, as ``sidecar-injector policy`` prints them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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


def test_the_kustomization_installs_the_four_objects_and_nothing_of_the_webhook() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(POLICY)], capture_output=True, text=True, check=True
    ).stdout
    objects = [obj for obj in yaml.safe_load_all(rendered) if obj]
    assert [obj["kind"] for obj in objects] == [
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    assert objects == list(yaml.safe_load_all((POLICY / "policy.yaml").read_text()))
