"""``make node``: a one-node cluster with the install deployed, in the foreground until Ctrl-C.

For exploring with kubectl what the e2e node tests exercise: start this in
one terminal, paste the printed ``export KUBECONFIG=...`` into another, and
create pods in the ``demo`` namespace (opted in). Ctrl-C (or SIGTERM) stops
every pod, every process, and restores the host (iptables, sysctls, mounts,
cgroups, the bridge), then reports anything it could not restore.

Run as ``python -m harness.kube.run_node`` from the repository root, as root.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from harness.kube.binaries import ControlPlaneError, build_binaries
from harness.kube.images import BUSYBOX_TAG, ImageBuildError, build_images
from harness.kube.node import Node, NodeError, build_node_binaries
from harness.kube.node_install import NodeInstall

DEMO_NAMESPACE = "demo"


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Build or reuse everything, start the node, deploy, wait for Ctrl-C, tear down."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--no-install", action="store_true", help="start the node only, without the injector"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        images = build_images()
        node = Node(
            images=images,
            control_plane_bin_dir=build_binaries(),
            node_bin_dir=build_node_binaries(),
            sandbox_image=BUSYBOX_TAG,
        )
    except (ImageBuildError, NodeError, ControlPlaneError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    install: NodeInstall | None = None
    started = time.monotonic()
    try:
        node.start()
        print(f"node ready in {time.monotonic() - started:.1f}s {node.times.phases}")
        if not args.no_install:
            install = NodeInstall(node).deploy()
            print(f"injector deployed and injecting at {time.monotonic() - started:.1f}s")
            node.control_plane.create_namespace(
                DEMO_NAMESPACE, labels={"sidecar-injection": "enabled"}
            )
        print()
        print(f"export KUBECONFIG={node.kubeconfig}")
        print()
        print(f"logs: {node.workdir}/*.log and {node.control_plane.workdir}/*.log")
        if install is not None:
            print(f"webhook CA (caBundle): {install.ca_file}")
            print(f"namespace {DEMO_NAMESPACE!r} is opted in; for example:")
            # --command: the busybox image's entrypoint is `sleep`, so the
            # words after `--` must replace it, not become its arguments.
            print(
                f"  kubectl -n {DEMO_NAMESPACE} run web --image={BUSYBOX_TAG} "
                "--image-pull-policy=Never --command -- httpd -f -p 8080"
            )
            print(f"  kubectl -n {DEMO_NAMESPACE} get pod web -o wide")
        print("images on the node: " + ", ".join(sorted(i.tag for i in images.values())))
        print("\nCtrl-C stops every pod and process and restores the host.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping", file=sys.stderr)
        status = 0
    except (NodeError, ControlPlaneError) as error:
        print(f"error: {error}", file=sys.stderr)
        status = 1
    finally:
        if install is not None:
            install.close()
        leftovers = node.stop()
    if leftovers:
        print("teardown left host state behind:", file=sys.stderr)
        for line in leftovers:
            print(f"  {line}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
