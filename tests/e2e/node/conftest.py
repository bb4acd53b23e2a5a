"""The node every test in this folder shares, and the order its files run in."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.kube.binaries import build_binaries, cached_bin_dir
from harness.kube.images import BUSYBOX_TAG, ImageBuildError, build_images
from harness.kube.node import Node, build_node_binaries, missing_packages, unsupported_reason

HERE = Path(__file__).resolve().parent
FILE_ORDER = ("test_host_leftovers.py", "test_webhook_mode.py", "test_policy_mode.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put this folder's tests in ``FILE_ORDER``, each file's own order kept, where they were."""
    places = [i for i, item in enumerate(items) if item.path.parent == HERE]
    ours = sorted((items[i] for i in places), key=lambda item: FILE_ORDER.index(item.path.name))
    for place, item in zip(places, ours, strict=True):
        items[place] = item


@pytest.fixture(scope="package")
def node() -> Iterator[Node]:
    """A running node for this folder; its teardown fails if host state is left behind."""
    reason = unsupported_reason()
    if reason is not None:
        pytest.skip(f"this machine cannot run a Kubernetes node: {reason}")
    if cached_bin_dir() is None and shutil.which("go") is None:
        pytest.skip("the node's Kubernetes binaries are built from source and 'go' is not on PATH")
    missing = missing_packages()
    if missing:
        pytest.fail(f"the real-node tests need: apt-get install {' '.join(missing)} (.ci/run does)")
    try:
        images = build_images()
    except ImageBuildError as error:
        pytest.fail(f"image build failed: {error}")
    with Node(
        images=images,
        control_plane_bin_dir=build_binaries(),
        node_bin_dir=build_node_binaries(),
        sandbox_image=BUSYBOX_TAG,
    ) as running:
        yield running
