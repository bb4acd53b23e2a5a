"""What a fresh interpreter imports with the engine: asked of a new process, not this one."""

from __future__ import annotations

import subprocess
import sys


def test_the_engine_imports_neither_fastapi_nor_kubernetes() -> None:
    # A fresh interpreter: the test process itself has imported everything.
    probe = (
        "import sys, webhook.engine, webhook.manifests.preview, webhook.cli.commands\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'fastapi', 'starlette', 'kubernetes', 'uvicorn'})\n"
        "print(','.join(bad))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == ""
