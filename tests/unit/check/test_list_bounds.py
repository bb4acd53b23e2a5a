"""``Cluster.list`` reads a paged list within bounds on the whole list: bytes, pages and time.

An API server may promise one more page forever (pages that always carry a
continue token), send big pages or slow ones: the list as a whole is cut
after its page bound, its byte bound, or its deadline (a caller's deadline
is ``TimeUp``, to keep what was read). Against the fake API server's endless,
padded and slow namespace lists; the real command, its memory measured, is
in ``tests/process/test_check_list_bounds.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.fake_kube_api import FakeKubeAPI
from tests.unit.check.support import cluster_of
from webhook.cluster.reader import Cluster, ClusterError, TimeUp

NAMESPACES = "/api/v1/namespaces"


@pytest.fixture
def api(fake_api: FakeKubeAPI) -> FakeKubeAPI:
    """One opted-in namespace, in lists that never end."""
    fake_api.add("shop", {"sidecar-injection": "enabled"})
    fake_api.endless_lists = True
    return fake_api


def cluster(api: FakeKubeAPI, tmp_path: Path, *, timeout: float = 30.0) -> Cluster:
    return cluster_of(api, tmp_path, timeout=timeout)


def test_a_list_is_cut_after_its_page_bound(api: FakeKubeAPI, tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match=f"^the list {NAMESPACES} goes on past 5 pages$"):
        list(cluster(api, tmp_path).list(NAMESPACES, max_pages=5))
    assert api.requests["list"] == 5


def test_a_list_is_cut_after_its_byte_bound(api: FakeKubeAPI, tmp_path: Path) -> None:
    api.list_padding = 100_000  # a little under, with its JSON
    with pytest.raises(ClusterError, match=r"is over 250000 bytes in all \(3 pages read\)$"):
        list(cluster(api, tmp_path).list(NAMESPACES, max_bytes=250_000))


def test_a_deadline_the_caller_gives_is_time_up_to_keep_what_was_read(
    api: FakeKubeAPI, tmp_path: Path
) -> None:
    api.list_delay = 0.2
    items = cluster(api, tmp_path).list(NAMESPACES, until=time.monotonic() + 3)
    assert next(items)["metadata"]["name"] == "shop"
    with pytest.raises(TimeUp):
        list(items)


def test_a_list_that_ends_is_read_whole(api: FakeKubeAPI, tmp_path: Path) -> None:
    api.endless_lists = False
    for index in range(7):
        api.add(f"ns-{index}")
    names = [o["metadata"]["name"] for o in cluster(api, tmp_path).list(NAMESPACES, page_size=2)]
    assert names == sorted(["shop", *(f"ns-{index}" for index in range(7))])
