"""What ``check``'s unit tests share: a bounded client of the fake API server.

The contexts the checks alone read are built in ``contexts.py``; the fixtures
(the fake API server with an object store routed everywhere, and a client of
it) are in this package's ``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

from harness.fake_kube_api import FakeKubeAPI
from webhook.cluster import kube
from webhook.cluster.reader import Cluster


def cluster_of(
    api: FakeKubeAPI, tmp_path: Path, *, timeout: float, connect_timeout: float = 5.0
) -> Cluster:
    """``check``'s bounded client of ``api``, through a kubeconfig written in ``tmp_path``."""
    configuration = kube.load_configuration(api.write_kubeconfig(tmp_path / "kubeconfig"))
    return Cluster(kube.Connection(configuration, connect_timeout=connect_timeout), timeout=timeout)
