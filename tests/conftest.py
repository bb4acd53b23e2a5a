"""What every tier shares: the tier markers and the unit tier's guard, and Hypothesis profiles.

Each tier's folder has its own ``conftest.py`` with its fixtures; the objects
tests build are in ``tests/builders.py`` and the servers they run in the
top-level ``harness`` package.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tests.profiles  # noqa: F401 - registers and loads the Hypothesis profile
from harness.fake_kube_api import FakeKubeAPI

pytest_plugins = ["tests.tiers", "pytester"]


@pytest.fixture
def fake_api() -> Iterator[FakeKubeAPI]:
    """The fake API server (:mod:`harness.fake_kube_api`), empty, stopped after the test."""
    with FakeKubeAPI() as api:
        yield api
