"""Fixtures for ``check``'s tests against the fake API server (``fake_api``, tests/conftest.py).

``store`` routes every path to a store of plain objects (what the
discovery steps read: the webhook configuration, Services, Deployments,
EndpointSlices, pods, workloads), ``cluster`` is ``check``'s own bounded
client of the server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.fake_kube_api import FakeKubeAPI, ObjectStore
from tests.unit.check.support import cluster_of
from webhook.cluster.reader import Cluster


@pytest.fixture
def store(fake_api: FakeKubeAPI) -> ObjectStore:
    """An empty object store that answers every path of ``fake_api``."""
    objects = ObjectStore()
    fake_api.route("/", objects)
    return objects


@pytest.fixture
def cluster(fake_api: FakeKubeAPI, tmp_path: Path) -> Cluster:
    """A client of ``fake_api`` with five seconds for each request."""
    return cluster_of(fake_api, tmp_path, timeout=5)
