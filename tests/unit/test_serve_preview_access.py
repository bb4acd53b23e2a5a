"""``serve`` gives the app a ``PreviewAccess`` exactly when its namespaces come from an API server.

Decided by the namespace source ``serve`` chose, not by the flags again: a
namespaces file or no source leaves ``/preview`` open, any other source gets
callers reviewed by the API server the source reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from harness.fake_kube_api import FakeKubeAPI
from webhook.cluster.namespace_cache import KubeNamespaceCache
from webhook.cluster.namespaces_file import FileNamespaces, StaticNamespaces
from webhook.service.preview_access import ClusterAccess
from webhook.service.server import ServeError, ServeSettings, _preview_access


def test_no_source_or_a_namespaces_file_leaves_previews_open(tmp_path: Path) -> None:
    file = tmp_path / "namespaces.yaml"
    file.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n")
    assert _preview_access(ServeSettings(), StaticNamespaces()) is None
    assert _preview_access(ServeSettings(namespaces_file=file), FileNamespaces(file)) is None


def test_a_cluster_source_gets_previews_reviewed_by_the_same_api_server(
    fake_api: FakeKubeAPI, tmp_path: Path
) -> None:
    kubeconfig = fake_api.write_kubeconfig(tmp_path / "kubeconfig")
    source = KubeNamespaceCache(client.Configuration(host=fake_api.url))
    access = _preview_access(ServeSettings(kubeconfig=kubeconfig), source)
    assert isinstance(access, ClusterAccess)
    access.close()


def test_a_kubeconfig_the_reviews_cannot_use_stops_serve_with_one_line(
    fake_api: FakeKubeAPI, tmp_path: Path
) -> None:
    source = KubeNamespaceCache(client.Configuration(host=fake_api.url))
    broken = tmp_path / "kubeconfig"
    broken.write_text("clusters: []\n")
    with pytest.raises(ServeError) as caught:
        _preview_access(ServeSettings(kubeconfig=broken), source)
    assert "\n" not in str(caught.value)
    assert "cannot configure the Kubernetes client" in str(caught.value)
