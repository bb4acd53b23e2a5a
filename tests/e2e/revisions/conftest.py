"""Three revisions of the Helm chart for the package: default, canary (a newer proxy) and stable.

All three are rendered by ``helm template``, applied to the session's control
plane and served by local processes (``harness.kube.revision_install``); a
test chooses which of them are installed (their webhook configurations) with
``revisions.install``. The namespaces they live in (``mesh-system``) and
those the tests make are removed afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.kube.binaries import helm_binary
from harness.kube.control_plane import ControlPlane
from harness.kube.revision_install import ChartRevision, MeshSystem
from tests.e2e.revisions.shared import Namespaces, Revisions

CANARY_PROXY = "v1.41.0"


@pytest.fixture(scope="package")
def revisions(control_plane: ControlPlane) -> Iterator[Revisions]:
    if helm_binary(build=True) is None:
        pytest.skip("helm is not cached and Go is not on PATH to build it (make helm)")
    configs = {"default": {}, "canary": {"proxy": {"version": CANARY_PROXY}}, "stable": {}}
    with MeshSystem(control_plane):
        started: dict[str, ChartRevision] = {}
        try:
            for name, config in configs.items():
                started[name] = ChartRevision(control_plane, name, config=config)
                started[name].start()
            installed = Revisions(control_plane, started)
            yield installed
            # Nothing of them left to inject the session's other pods: the
            # policy revisions' objects go too (close removes the webhooks).
            installed.install({})
        finally:
            for revision in started.values():
                revision.close()


@pytest.fixture(scope="package")
def namespaces(control_plane: ControlPlane) -> Iterator[Namespaces]:
    made = Namespaces(control_plane)
    try:
        yield made
    finally:
        made.delete_all()
