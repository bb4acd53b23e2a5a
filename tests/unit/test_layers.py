"""Every layer is a package that says in one line what lives there."""

from __future__ import annotations

import ast

from tests.builders import REPO

ROOT = REPO
LAYERS = ("contract", "engine", "manifests", "cluster", "pki", "service", "ops", "cli")


def test_every_layer_is_a_package_that_says_in_one_line_what_lives_there() -> None:
    for layer in LAYERS:
        init = ROOT / "webhook" / layer / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{layer} has no docstring"
        assert "\n" not in doc.strip(), f"{layer}'s docstring is more than one line"


def test_the_architecture_page_stays_a_short_read() -> None:
    """ARCHITECTURE.md: the layers, one request walked through, where new things go, in at
    most 200 lines (what the house asked of it; the detail belongs in docs/)."""
    lines = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"ARCHITECTURE.md has {len(lines)} lines"
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[:3] == [
        "## Layers",
        "## One `/mutate` request, socket to patch",
        "## Where new things go",
    ]
