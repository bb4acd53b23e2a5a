"""Fixtures for end-to-end tests against a local control plane.

Importing this module is cheap and starts nothing: the binaries are built
(or taken from the cache) and the control plane started only when a test
asks for ``control_plane``, once per session.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.kube.binaries import build_binaries, cached_bin_dir
from harness.kube.control_plane import ControlPlane

# A cold build of kube-apiserver and kube-controller-manager takes far longer
# than the suite-wide per-test timeout, and pytest-timeout counts fixture
# setup against the first test that needs the fixture.
_COLD_BUILD_TIMEOUT = 3600
_FIXTURES = {"control_plane", "control_plane_bin_dir"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give the test that will trigger a cold build time to finish it.

    Only when the binaries are not cached yet, and only for tests that use
    the fixtures below; everything else keeps its usual timeout. The real
    node's tests (fixture ``node``) build their own binaries and images; they
    get the long timeout when any of those is not cached.
    """
    users = [i for i in items if _FIXTURES & set(getattr(i, "fixturenames", ()))]
    if users and cached_bin_dir() is None:
        for item in users:
            item.add_marker(pytest.mark.timeout(_COLD_BUILD_TIMEOUT), append=False)
    node_users = [i for i in items if "node" in getattr(i, "fixturenames", ())]
    if node_users and not _node_parts_cached():
        for item in node_users:
            item.add_marker(pytest.mark.timeout(_COLD_BUILD_TIMEOUT), append=False)


def _node_parts_cached() -> bool:
    from harness.kube.images import images_cached
    from harness.kube.node import cached_node_bin_dir

    return cached_bin_dir() is not None and cached_node_bin_dir() is not None and images_cached()


@pytest.fixture(scope="session")
def control_plane_bin_dir() -> Path:
    """Directory with kube-apiserver and kube-controller-manager, built on first use.

    Skipped only when Go is missing and nothing is cached (the binaries cannot
    exist then); a failing build is a failure, not a skip.
    """
    if cached_bin_dir() is None and shutil.which("go") is None:
        pytest.skip(
            "the e2e control plane is built from source and 'go' is not on PATH "
            "(install Go, or run `make control-plane` where Go is available)"
        )
    return build_binaries()


@pytest.fixture(scope="session")
def control_plane(control_plane_bin_dir: Path) -> Iterator[ControlPlane]:
    """A running etcd + kube-apiserver + kube-controller-manager for the session.

    Startup problems fail with the tail of every component's log.
    """
    with ControlPlane(bin_dir=control_plane_bin_dir) as cluster:
        yield cluster
