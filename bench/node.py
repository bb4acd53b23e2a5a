"""Pod start-up with and without the mesh on a real one-node cluster.

A thin wrapper around ``harness/kube/node_bench.py``: the node of
``harness/kube/node.py`` (containerd, kubelet, scheduler, kube-proxy, the
install running from its own images), deployed with ``node_bench.BENCH_CONFIG``,
then :func:`~harness.kube.node_bench.replicaset_startup`: a ReplicaSet of
``replicas`` pods in an unmeshed namespace, then in a meshed one; seconds to
all Pod objects created and to all Ready, and their ratios.

The section is skipped, with the reason, where a node cannot run: not root,
kernel features missing, packages missing, no Go and nothing cached, images
that cannot be built, or another node holding the machine (one per machine).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any


class NodeUnavailable(Exception):
    """The node cannot be had here; the message is the reason the report gives."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Pods in the ReplicaSet; how long to wait for another node to release the machine."""

    replicas: int = 200
    lock_timeout: float = 60.0


def unavailable_reason() -> str | None:
    """Why this machine cannot run the node, else None (checked before anything starts)."""
    from harness.kube.binaries import cached_bin_dir
    from harness.kube.node import cached_node_bin_dir, missing_packages, unsupported_reason

    reason = unsupported_reason()
    if reason is not None:
        return f"this machine cannot run a Kubernetes node: {reason}"
    missing = missing_packages()
    if missing:
        return f"the node needs: apt-get install {' '.join(missing)}"
    cached = cached_bin_dir() is not None and cached_node_bin_dir() is not None
    if not cached and shutil.which("go") is None:
        return "the node's Kubernetes binaries are built from source and 'go' is not on PATH"
    return None


def run(plan: Plan) -> dict[str, Any]:
    """Start a node, deploy, measure once; :class:`NodeUnavailable` if the node cannot start."""
    from harness.kube.binaries import ControlPlaneError, build_binaries
    from harness.kube.images import BUSYBOX_TAG, ImageBuildError, build_images
    from harness.kube.node import Node, NodeError, build_node_binaries
    from harness.kube.node_bench import BENCH_CONFIG, replicaset_startup
    from harness.kube.node_install import node_install

    try:
        node = Node(
            images=build_images(),
            control_plane_bin_dir=build_binaries(),
            node_bin_dir=build_node_binaries(),
            sandbox_image=BUSYBOX_TAG,
            lock_timeout=plan.lock_timeout,
        )
        node.start()
    except (NodeError, ImageBuildError, ControlPlaneError) as err:
        raise NodeUnavailable(str(err).splitlines()[0]) from err
    try:
        with node_install(node, config_overrides=BENCH_CONFIG):
            results = replicaset_startup(node, replicas=plan.replicas)
    finally:
        leftovers = node.stop()
    results["host_not_restored"] = leftovers
    return results
