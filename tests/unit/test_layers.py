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
