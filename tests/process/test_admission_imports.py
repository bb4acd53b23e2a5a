"""Which modules a fresh interpreter loads for admission: asked of a new process, not this one."""

from __future__ import annotations

from webhook.service import admission


def test_admission_is_framework_free_and_only_the_app_imports_fastapi() -> None:
    import ast
    import subprocess
    import sys
    from pathlib import Path

    # The endpoints too: each answers without the framework; only the app wraps them.
    code = (
        "import sys, webhook.service.admission, webhook.contract.wire\n"
        "import webhook.service.mutate, webhook.service.preview_route, webhook.service.probes\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'fastapi', 'starlette', 'uvicorn'}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
    package = Path(admission.__file__).parent
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name.split(".")[0] in {"fastapi", "starlette"} for name in names):
                importers.add(path.relative_to(package).as_posix())
    assert importers == {"app.py"}  # within webhook/service; the other layers: pyproject contracts
