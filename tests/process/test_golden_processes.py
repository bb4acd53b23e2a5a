"""The golden outputs through real processes: envoy validates every distinct bootstrap, and one
``uninject`` process gives every input back.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from harness.kubelet import EXAMPLE_POD_FIELDS, envoy_validate
from harness.validation import pod_spec
from tests.builders import GOLDEN
from webhook.engine import uninject
from webhook.engine.workloads import WORKLOADS
from webhook.manifests.documents import load_objects
from webhook.manifests.patched import patched

INPUTS = GOLDEN / "inputs"
EXPECTED = GOLDEN / "expected"
CASES = sorted(path.stem for path in INPUTS.glob("*.yaml"))
CLI = Path(sys.executable).parent / "sidecar-injector"


def golden_proxies() -> dict[str, dict[str, Any]]:
    """Each distinct ``mesh-proxy`` container in the golden outputs, keyed by its args."""
    found: dict[str, dict[str, Any]] = {}
    for name in CASES:
        path = EXPECTED / f"{name}.yaml"
        if not path.exists():
            continue
        for obj in yaml.safe_load_all(path.read_text()):
            if obj.get("kind") not in WORKLOADS:
                continue
            spec = pod_spec(obj)
            for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
                if container["name"] == "mesh-proxy":
                    found.setdefault("\0".join(container["args"]), container)
    return found


def test_every_golden_proxy_command_passes_envoy_validate() -> None:
    proxies = golden_proxies()
    assert len(proxies) >= 5, "the goldens should cover several distinct bootstraps"
    for container in proxies.values():
        envoy_validate(container, EXAMPLE_POD_FIELDS)


def test_uninject_of_every_injected_golden_gives_its_input_back() -> None:
    # The expected files are inject's output (checked byte for byte above);
    # one real uninject process reads them all, as a user would pipe them.
    names = [c for c in CASES if not c.startswith("refuse-")]
    files = [arg for name in names for arg in ("-f", f"expected/{name}.yaml")]
    back = subprocess.run(
        [str(CLI), "uninject", *files, "-o", "yaml"],
        cwd=GOLDEN, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert back.returncode == 0, back.stderr
    expected = []
    for name in names:
        inputs = load_objects((INPUTS / f"{name}.yaml").read_bytes(), origin=name)
        outputs = load_objects((GOLDEN / "expected" / f"{name}.yaml").read_bytes(), origin=name)
        assert len(outputs) == len(inputs)
        # uninject(inject(x)) == x, a copied status annotation included. An input
        # inject left alone (already injected) has its own injection taken out.
        expected += [
            before if after != before else patched(uninject(before))
            for before, after in zip(inputs, outputs, strict=True)
        ]
    assert list(yaml.safe_load_all(back.stdout)) == expected
