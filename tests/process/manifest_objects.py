"""The install's objects as the manifest tests read them: rendered by ``kubectl kustomize``.

Shared by the files that hold ``manifests/`` to what the server and the
cluster expect (``test_manifests.py``, ``test_manifests_access.py``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.builders import REPO

MANIFESTS = REPO / "manifests"

Object = dict[str, Any]


def kustomize(directory: Path) -> list[Object]:
    """The objects ``kubectl kustomize DIRECTORY`` renders (skips the test without kubectl)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not on PATH; these tests render with `kubectl kustomize` (CI has it)"
        )
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


def all_of(objects: Sequence[Object], kind: str) -> list[Object]:
    """Every object of ``kind``."""
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: Sequence[Object], kind: str) -> Object:
    """The one object of ``kind`` (fails when there is none or several)."""
    found = all_of(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def injector_container(objects: Sequence[Object]) -> Object:
    """The Deployment's one container."""
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Object = containers[0]
    return result


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Evaluate a LabelSelector the way the apiserver does."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True
