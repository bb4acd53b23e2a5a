"""The Kubernetes plumbing shared by the namespace cache and ``check`` (``webhook.kube``)."""

from __future__ import annotations

import ast
from pathlib import Path

WEBHOOK = Path(__file__).parent.parent / "webhook"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_only_the_kube_module_imports_the_kubernetes_client() -> None:
    importers = sorted(
        str(path.relative_to(WEBHOOK))
        for path in WEBHOOK.rglob("*.py")
        if any(name.split(".")[0] == "kubernetes" for name in _imports(path))
    )
    assert importers == ["kube.py"]
