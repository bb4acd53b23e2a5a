"""The layering is written down as import-linter contracts (pyproject.toml); this runs them.

Each contract names what it keeps: the layers pointing one way, the engine on
the standard library alone, one module for the kubernetes client, one for the
web framework, the two namespace sources apart.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.builders import REPO

ROOT = REPO
LAYERS = ("contract", "engine", "manifests", "cluster", "pki", "service", "ops", "cli")


def test_every_import_contract_is_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert "0 broken" in done.stdout or " broken" not in done.stdout
    assert done.stdout.count(" KEPT") == 5


def test_every_layer_is_a_package_that_says_in_one_line_what_lives_there() -> None:
    for layer in LAYERS:
        init = ROOT / "webhook" / layer / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{layer} has no docstring"
        assert "\n" not in doc.strip(), f"{layer}'s docstring is more than one line"
