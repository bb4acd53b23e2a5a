"""The Helm chart's objects as the chart tests read them: rendered by ``helm template``.

And the normal form in which the chart's default render and ``manifests/``'s
kustomize render are compared: what only one of them can have is taken out
(the certificates Job and its RBAC, which are Helm hooks; Secrets; the
``caBundle``; ``helm.sh/`` annotations), the ConfigMap's content hash is cut
from its name (both name it by content, each hashing its own text), and the
config is compared as the YAML it is, not as text with comments.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Sequence
from copy import deepcopy
from typing import Any

import pytest
import yaml

from harness.kube.binaries import helm_binary
from tests.builders import REPO

CHART = REPO / "charts" / "sidecar-injector"
CONFIG_MAP = re.compile(r"^(sidecar-injector-config(?:-[a-z0-9-]+?)?)-[a-z0-9]{10}$")

Object = dict[str, Any]


def helm() -> str:
    """The cached helm (skips the test without it)."""
    found = helm_binary()
    if found is None:
        pytest.skip("helm is not cached: make helm (builds it from its Go module)")
    return str(found)


def template(*args: str, namespace: str = "mesh-system", check: bool = True) -> list[Object]:
    """``helm template`` of the chart with ``args`` (``--set``, ``--set-file``)."""
    done = run_template(*args, namespace=namespace)
    if check:
        assert done.returncode == 0, done.stderr
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


def run_template(*args: str, namespace: str = "mesh-system") -> subprocess.CompletedProcess[str]:
    """``helm template`` as it ran: for the tests of what it refuses."""
    return subprocess.run(
        [helm(), "template", "sidecar-injector", str(CHART), "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def is_hook(obj: Object) -> bool:
    """A Helm hook (the certificates Job and what it runs as)."""
    return "helm.sh/hook" in ((obj.get("metadata") or {}).get("annotations") or {})


def normal(objects: Iterable[Object]) -> dict[tuple[str, str], Object]:
    """The objects by (kind, name) in the form both renders are compared in."""
    found: dict[tuple[str, str], Object] = {}
    for original in objects:
        if is_hook(original) or original["kind"] == "Secret":
            continue
        obj = deepcopy(original)
        metadata = obj["metadata"]
        annotations = {
            k: v
            for k, v in (metadata.get("annotations") or {}).items()
            if not k.startswith("helm.sh/")
        }
        if annotations:
            metadata["annotations"] = annotations
        else:
            metadata.pop("annotations", None)
        if obj["kind"] == "ConfigMap":
            metadata["name"] = CONFIG_MAP.sub(r"\1", metadata["name"])
            obj["data"] = {k: yaml.safe_load(v) for k, v in obj["data"].items()}
        if obj["kind"] == "Deployment":
            for volume in obj["spec"]["template"]["spec"].get("volumes") or []:
                if "configMap" in volume:
                    volume["configMap"]["name"] = CONFIG_MAP.sub(r"\1", volume["configMap"]["name"])
        for hook in obj.get("webhooks") or []:
            hook["clientConfig"].pop("caBundle", None)
        found[(obj["kind"], metadata["name"])] = obj
    return found


def named(objects: Sequence[Object], kind: str) -> dict[str, Object]:
    """The objects of ``kind`` by name."""
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def yaml_of(obj: Any) -> str:
    """For assertion messages."""
    return yaml.safe_dump(obj, sort_keys=True)
