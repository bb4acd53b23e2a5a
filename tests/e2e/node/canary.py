"""The canary upgrade of docs/upgrade.md on the real node, with the Helm chart, step by step.

Run by ``test_webhook_mode.py`` before anything there installs ``manifests/``: the
default revision and a canary with a newer proxy version as Helm releases,
a Deployment moved by a namespace label and another by a tag, rollout
restarts, ``check``, the default revision uninstalled; all of it while pods
are created back to back in the namespace being moved, none of them failing.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any, Final

from harness.kube.admin_api import ApiRefused
from harness.kube.helm_release import HelmRelease, remove_everything
from harness.kube.images import product_tags
from harness.kube.install import PROXY
from harness.kube.node import Node
from harness.kube.node_install import (
    SLEEPER,
    Outcome,
    PodStream,
    apply,
    delete_namespace,
    deployment_manifest,
    recorded_revision,
    summarize,
    wait_ready,
)
from harness.server import CLI

REV: Final = "sidecar.mesh.io/rev"
ENABLED: Final = {"sidecar-injection": "enabled"}
CANARY_PROXY: Final = "v1.41.0"
REPLICAS: Final = 2


def _proxy_image(pod: dict[str, Any]) -> str:
    spec = pod["spec"]
    for container in (spec.get("initContainers") or []) + spec["containers"]:
        if container["name"] == PROXY:
            return str(container["image"])
    raise AssertionError(f"{pod['metadata']['name']} has no {PROXY}")


def _tag(node: Node, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    done = subprocess.run(
        [CLI, "tag", *args, "--kubeconfig", str(node.kubeconfig)],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _check(node: Node) -> dict[str, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    done = subprocess.run(
        [CLI, "check", "--kubeconfig", str(node.kubeconfig), "-o", "json", "--connect", "direct"],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )  # fmt: skip
    assert done.stdout, done.stderr
    return {c["name"]: c for c in json.loads(done.stdout)["checks"]}


class Walk:
    """The state of one walk: the node, the releases, the namespaces, the pod stream."""

    def __init__(self, node: Node) -> None:
        self.node = node
        base = product_tags()["envoy"]
        self.repository = base.rsplit(":", 1)[0]
        self.canary_image = f"{self.repository}:{CANARY_PROXY}"
        self.default = HelmRelease(node, "default")
        self.canary = HelmRelease(node, "canary", {"config": {"proxy": {"version": CANARY_PROXY}}})
        self.shop = "shop"
        self.stream_namespace = "stream"
        self.stream: PodStream | None = None

    def served_by(self, namespace: str, revision: str) -> Callable[[], bool]:
        """Whether a dry-run pod in ``namespace`` comes back injected by ``revision`` now."""

        probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
                 "spec": {"containers": [{"name": "app", "image": "x"}]}}  # fmt: skip

        def check() -> bool:
            try:
                pod = self.node.control_plane.admin_api().create(namespace, probe, dry_run=True)
            except ApiRefused:
                return False
            return recorded_revision(pod) == revision

        return check

    def web_pods(self) -> list[dict[str, Any]]:
        return wait_ready(self.node, self.shop, "app=web", REPLICAS, timeout=240)

    def restart_web(self) -> list[dict[str, Any]]:
        self.node.kubectl("-n", self.shop, "rollout", "restart", "deployment/web")
        self.node.kubectl(
            "-n", self.shop, "rollout", "status", "deployment/web", "--timeout=300s", timeout=330
        )
        return self.web_pods()

    def run(self) -> list[Outcome]:
        """Every step; the stream's outcomes."""
        node = self.node
        # A newer proxy version: the same Envoy under the canary's tag.
        node.ctr("images", "tag", "--force", product_tags()["envoy"], self.canary_image)
        # 1. The default revision, and a Deployment it meshes.
        self.default.install()
        self.default.wait_until_injecting(ENABLED)
        node.control_plane.create_namespace(self.shop, labels=ENABLED)
        node.control_plane.create_namespace(self.stream_namespace, labels=ENABLED)
        apply(node, self.shop, deployment_manifest("web", replicas=REPLICAS, command=SLEEPER))
        for pod in self.web_pods():
            assert recorded_revision(pod) == "default"
            assert _proxy_image(pod) == product_tags()["envoy"]
        self.stream = PodStream(node.kubeconfig, self.stream_namespace).start()
        node.wait_for(lambda: self.stream is not None and self.stream.count() >= 20,
                      what="pods being created", timeout=60)  # fmt: skip

        # 2. The canary beside it: nothing moves yet.
        self.canary.install()
        self.canary.wait_until_injecting({REV: "canary"})
        assert self.served_by(self.stream_namespace, "default")()

        # 3. Moved by label: the stream's namespace (its sidecar-injection=enabled stays; rev wins).
        node.kubectl("label", "namespace", self.stream_namespace, f"{REV}=canary")
        node.wait_for(self.served_by(self.stream_namespace, "canary"),
                      what="the stream's namespace on canary", timeout=120)  # fmt: skip

        # 4. Moved by tag: shop is labelled with the tag while it points at
        # default (nothing changes), then the tag moves and shop with it.
        assert _tag(node, "set", "prod", "--revision", "default") == (
            "tag prod points at revision default\n"
        )
        node.kubectl("label", "namespace", self.shop, f"{REV}=prod")
        assert self.served_by(self.shop, "default")()
        moved = _tag(node, "set", "prod", "--revision", "canary")
        assert moved == "tag prod points at revision canary (was default)\n"
        node.wait_for(self.served_by(self.shop, "canary"), what="shop on canary", timeout=120)
        # helm upgrade keeps the tag: the chart reads it back from the selectors.
        self.canary.upgrade()
        assert "prod  canary" in _tag(node, "list")

        # 5. check sees both revisions and the pods a restart moves to canary.
        checks = _check(node)
        assert checks["revisions"]["status"] == "pass", checks["revisions"]
        assert (
            checks["revisions"]["message"] == "2 revisions: canary, default (tags: prod -> canary)"
        )
        assert checks["revision-sidecars"]["data"]["outdated"].get("canary", 0) >= REPLICAS

        # 6. A rollout restart puts the canary's proxy in every pod.
        for pod in self.restart_web():
            assert recorded_revision(pod) == "canary"
            assert _proxy_image(pod) == self.canary_image
        checks = _check(node)
        assert checks["revision-labels"]["status"] == "pass", checks["revision-labels"]

        # 7. The default revision uninstalled: the canary serves on.
        self.default.uninstall()
        started = self.stream.count() if self.stream is not None else 0
        node.wait_for(lambda: self.stream is not None and self.stream.count() >= started + 30,
                      what="creations after the default revision is gone", timeout=120)  # fmt: skip
        assert node.kubectl("get", "namespace", "mesh-system").returncode == 0
        return self.stop_stream()

    def stop_stream(self) -> list[Outcome]:
        outcomes = self.stream.stop() if self.stream is not None else []
        self.stream = None
        return outcomes

    def close(self) -> None:
        try:
            self.stop_stream()
        finally:
            for namespace in (self.shop, self.stream_namespace):
                delete_namespace(self.node, namespace)
            remove_everything(self.node, [self.canary, self.default])
            self.node.ctr("images", "rm", self.canary_image, check=False)


def canary_walk(node: Node) -> None:
    """Walk the canary upgrade; every pod created meanwhile succeeded and was injected."""
    walk = Walk(node)
    started = time.monotonic()
    try:
        outcomes = walk.run()
    finally:
        walk.close()
    assert outcomes
    assert all(o.ok and o.injected for o in outcomes), summarize(outcomes, origin=started)
    revisions = {o.revision for o in outcomes}
    assert revisions == {"default", "canary"}, revisions
