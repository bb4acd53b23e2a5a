"""What the mesh costs at pod start-up, on the real node: a ReplicaSet of 200 pods.

:func:`replicaset_startup` creates the same ReplicaSet (busybox pods that
sleep) in an unmeshed namespace and then in a meshed one, on the same node
and install, and measures for each:

- ``created_s``: from ``kubectl apply`` to all Pod objects existing, i.e.
  what the ReplicaSet controller, the apiserver and (meshed) the webhook
  take to admit them: the injector's cost on the API path;
- ``ready_s``: from ``kubectl apply`` to all pods Ready: what the node takes
  to run them, ``mesh-init`` and a started, ready ``mesh-proxy`` included.

Between the two runs, the first namespace is deleted and its pods are gone,
so both start from an idle node.

Resources: the node has 2 CPUs. Stock settings request 100m CPU and 128Mi for
each proxy and 10m CPU for ``mesh-init``; 200 such pods do not fit (the
scheduler would leave most Pending), which measures the node's size, not the
mesh. So the meshed namespace asks for ``1m``/``16Mi`` per proxy through its
labels, and the install is deployed with ``init.resources.cpuRequest: 1m``
(:data:`BENCH_CONFIG`): the only change from the stock install, and the same
an operator of a small cluster would make.

``python -m harness.kube.node_bench`` starts a node, deploys, measures once and
prints JSON (``make bench`` calls :func:`replicaset_startup` with its own node).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Final

from harness.kube.binaries import build_binaries
from harness.kube.images import BUSYBOX_TAG, build_images
from harness.kube.node import Node, build_node_binaries
from harness.kube.node_install import SLEEPER, is_ready, node_install, pod_spec

REPLICAS: Final = 200
BENCH_CONFIG: Final = {"init": {"resources": {"cpuRequest": "1m"}}}
MESHED_LABELS: Final = {
    "sidecar-injection": "enabled",
    "sidecar.mesh.io/proxy-cpu-request": "1m",
    "sidecar.mesh.io/proxy-memory-request": "16Mi",
}


def _replicaset(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "bench"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "bench"}},
            "template": {"metadata": {"labels": {"app": "bench"}}, "spec": pod_spec(SLEEPER)},
        },
    }


def _pods(api: Any, namespace: str) -> list[dict[str, Any]]:
    response = api.list_namespaced_pod(namespace, _preload_content=False)
    items: list[dict[str, Any]] = json.loads(response.data)["items"]
    return items


def measure(
    node: Node, namespace: str, labels: dict[str, str], *, replicas: int, timeout: float
) -> dict[str, Any]:
    """Create the ReplicaSet in a new namespace; seconds to all created and all Ready."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(node.kubeconfig))  # type: ignore[no-untyped-call]
    api = client.CoreV1Api(api_client)
    node.control_plane.create_namespace(namespace, labels=labels)
    started = time.monotonic()
    node.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(_replicaset(replicas)))
    created_s: float | None = None
    deadline = started + timeout
    injected = 0
    while True:
        items = _pods(api, namespace)
        now = time.monotonic() - started
        if created_s is None and len(items) >= replicas:
            created_s = now
            injected = sum(
                1
                for p in items
                if "mesh-proxy"
                in [c["name"] for c in p["spec"].get("initContainers") or []]
                + [c["name"] for c in p["spec"]["containers"]]
            )
        if len(items) >= replicas and all(is_ready(p) for p in items):
            ready_s = now
            break
        if time.monotonic() > deadline:
            ready = sum(1 for p in items if is_ready(p))
            raise TimeoutError(
                f"{namespace}: {len(items)}/{replicas} created, {ready} ready after {timeout:.0f}s"
            )
        time.sleep(0.25)
    return {
        "namespace": namespace,
        "replicas": replicas,
        "created_s": round(created_s or 0.0, 2),
        "ready_s": round(ready_s, 2),
        "injected": injected,
    }


def _delete_and_wait(node: Node, namespace: str, timeout: float) -> None:
    node.kubectl(
        "delete", "namespace", namespace, "--wait=true", f"--timeout={int(timeout)}s",
        timeout=timeout + 30,
    )  # fmt: skip


def replicaset_startup(
    node: Node, *, replicas: int = REPLICAS, timeout: float = 900.0
) -> dict[str, Any]:
    """Unmeshed, then meshed: timings and their ratios (meshed / unmeshed).

    ``node`` must have the install deployed with :data:`BENCH_CONFIG` (see
    the module docstring). Each namespace is deleted, and waited for, after
    its run.
    """
    results: dict[str, Any] = {}
    for name, labels in (("unmeshed", {}), ("meshed", MESHED_LABELS)):
        namespace = f"bench-{name}"
        try:
            results[name] = measure(node, namespace, labels, replicas=replicas, timeout=timeout)
            results[name]["memory_mib"] = node.memory_mib()
        finally:
            _delete_and_wait(node, namespace, timeout)
    results["ratio_created"] = round(
        results["meshed"]["created_s"] / results["unmeshed"]["created_s"], 2
    )
    results["ratio_ready"] = round(results["meshed"]["ready_s"] / results["unmeshed"]["ready_s"], 2)
    return results


def main(argv: list[str] | None = None) -> int:
    """Start a node, deploy with :data:`BENCH_CONFIG`, measure once, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--replicas", type=int, default=REPLICAS)
    args = parser.parse_args(argv)
    with (
        Node(
            images=build_images(),
            control_plane_bin_dir=build_binaries(),
            node_bin_dir=build_node_binaries(),
            sandbox_image=BUSYBOX_TAG,
        ) as node,
        node_install(node, config_overrides=BENCH_CONFIG),
    ):
        results = replicaset_startup(node, replicas=args.replicas)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
