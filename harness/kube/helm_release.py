"""The Helm chart installed on the real node the way the chart's README tells users.

``helm install`` of ``charts/sidecar-injector`` into ``mesh-system``, one
release per revision (``sidecar-injector`` for the default revision,
``sidecar-injector-<revision>`` for others), with ``--wait``: the
certificates hook Job runs on the node from the webhook image, the
Deployment rolls out from the images :mod:`harness.kube.images` built, and the
Job's post-install run writes the CA into the webhook configuration. Then,
as :class:`harness.kube.node_install.NodeInstall` does, dry-run pods until
one in a namespace the revision serves comes back injected by it.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from harness.kube.admin_api import ApiRefused
from harness.kube.binaries import helm_binary
from harness.kube.install import NAMESPACE
from harness.kube.node import Node, NodeError
from harness.kube.node_install import pod_manifest, recorded_revision

REPO: Final = Path(__file__).resolve().parents[2]
CHART: Final = REPO / "charts" / "sidecar-injector"
PROBE_NAMESPACE: Final = "sidecar-injector-e2e-probe"


def release_name(revision: str) -> str:
    """The release (and the revision's object names): the revision as a suffix."""
    return "sidecar-injector" if revision == "default" else f"sidecar-injector-{revision}"


class HelmRelease:
    """One revision of the chart as a Helm release on ``node``."""

    def __init__(self, node: Node, revision: str, values: Mapping[str, Any] | None = None) -> None:
        self.node = node
        self.revision = revision
        self.name = release_name(revision)
        self.values = {**(values or {}), "revision": revision}
        found = helm_binary(build=True)
        if found is None:
            raise NodeError("helm is not cached and cannot be built here: make helm")
        self.helm = found

    def helm_run(self, *args: str, timeout: float = 420.0) -> str:
        """``helm ARGS`` against the node's API server; its stdout."""
        done = subprocess.run(
            [str(self.helm), "--kubeconfig", str(self.node.kubeconfig), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise NodeError(f"helm {args[0]} {self.name} failed: {done.stderr.strip()}")
        return done.stdout

    def _values_file(self, directory: Path) -> Path:
        path = directory / "values.yaml"
        path.write_text(yaml.safe_dump(self.values), encoding="utf-8")
        return path

    def install(self, *extra: str) -> HelmRelease:
        """``helm install --wait``; the default revision takes the namespace over."""
        own = ["--create-namespace", "--take-ownership"] if self.revision == "default" else []
        with tempfile.TemporaryDirectory(prefix="sidecar-injector-helm-") as tmp:
            self.helm_run(
                "install", self.name, str(CHART), "--namespace", NAMESPACE, *own,
                "--values", str(self._values_file(Path(tmp))), "--wait", "--timeout", "300s",
                *extra,
            )  # fmt: skip
        return self

    def upgrade(self, *extra: str) -> None:
        """``helm upgrade --wait`` with the release's values."""
        with tempfile.TemporaryDirectory(prefix="sidecar-injector-helm-") as tmp:
            self.helm_run(
                "upgrade", self.name, str(CHART), "--namespace", NAMESPACE,
                "--values", str(self._values_file(Path(tmp))), "--wait", "--timeout", "300s",
                *extra,
            )  # fmt: skip

    def uninstall(self) -> None:
        """``helm uninstall --wait`` (the namespace stays: resource-policy keep)."""
        self.helm_run(
            "uninstall", self.name, "--namespace", NAMESPACE, "--wait", "--timeout", "300s"
        )

    def objects(self, kind: str) -> list[dict[str, Any]]:
        """The release's objects of ``kind`` as the API server has them (by its name label)."""
        done = self.node.kubectl(
            "get", kind, "-A", "-l", f"app.kubernetes.io/name={self.name}", "-o", "json"
        )
        items: list[dict[str, Any]] = json.loads(done.stdout)["items"]
        return items

    def wait_until_injecting(self, labels: Mapping[str, str], *, timeout: float = 180.0) -> None:
        """Dry-run pods in a namespace labelled ``labels`` until one comes back injected by
        this revision (the Service's endpoints reach kube-proxy a moment after the rollout)."""
        namespace = f"{PROBE_NAMESPACE}-{self.revision}"
        api = self.node.control_plane.admin_api()
        if api.get(f"/api/v1/namespaces/{namespace}") is None:
            self.node.control_plane.create_namespace(namespace, labels=dict(labels))
        errors: list[str] = []

        def injected() -> bool:
            try:
                pod = api.create(namespace, pod_manifest("probe", command=["true"]), dry_run=True)
            except ApiRefused as error:
                errors.append(error.message)
                return False
            return recorded_revision(pod) == self.revision

        try:
            self.node.wait_for(
                injected, what=f"revision {self.revision} injecting", timeout=timeout
            )
        except Exception as error:
            raise NodeError(f"{error}; last errors: {errors[-3:]}") from error
        finally:
            self.node.kubectl(
                "delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False
            )


def remove_everything(node: Node, releases: Sequence[HelmRelease]) -> None:
    """Uninstall what is left of ``releases`` and delete mesh-system, waiting for it."""
    for release in releases:
        listed = release.helm_run("list", "--namespace", NAMESPACE, "-q", timeout=60).split()
        if release.name in listed:
            release.uninstall()
    node.kubectl(
        "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=180s",
        check=False, timeout=200,
    )  # fmt: skip
