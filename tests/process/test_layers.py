"""The layering is written down as import-linter contracts (pyproject.toml); this runs them.

Each contract names what it keeps: the layers pointing one way, the engine on
the standard library alone, one module for the kubernetes client, one for the
web framework, the two namespace sources apart.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.builders import REPO

ROOT = REPO


def test_every_import_contract_is_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert "0 broken" in done.stdout or " broken" not in done.stdout
    assert done.stdout.count(" KEPT") == 7
