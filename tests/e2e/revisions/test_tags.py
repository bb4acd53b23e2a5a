"""``sidecar-injector tag`` against the real API server: a tag moves namespaces without touching them.

A namespace labelled ``sidecar.mesh.io/rev=prod`` is served by whichever
revision the tag ``prod`` points at: nobody before ``tag set``, canary after
it, default after it moves, nobody after ``tag remove``; the namespace keeps
its resourceVersion throughout. A tag may not shadow a revision's name.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from harness.kube.control_plane import ControlPlane
from harness.kube.install import pod_manifest as pod
from harness.server import CLI
from tests.e2e.revisions.shared import (
    EFFECT_TIMEOUT,
    REV,
    Namespaces,
    Revisions,
    api,
    injected_by,
)

pytestmark = pytest.mark.cluster


def tag(control_plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(
        [CLI, "tag", *args, "--kubeconfig", str(control_plane.kubeconfig)],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip


def test_a_tag_moves_every_namespace_labelled_with_it(
    control_plane: ControlPlane, revisions: Revisions, namespaces: Namespaces
) -> None:
    revisions.install({"default": [], "canary": []})
    namespace = namespaces.create("tagged", {REV: "prod"})
    version = control_plane.kubectl(
        "get", "namespace", namespace, "-o", "jsonpath={.metadata.resourceVersion}"
    ).stdout
    cluster = api(control_plane)

    def served_by(expected: str | None) -> None:
        control_plane.wait_for(
            lambda: (
                injected_by(cluster.dry_run_pod(namespace, pod("web"), field_manager="e2e"))
                == expected
            ),
            what=f"pods of {namespace} injected by {expected}",
            timeout=EFFECT_TIMEOUT,
        )

    served_by(None)
    done = tag(control_plane, "set", "prod", "--revision", "canary")
    assert (done.returncode, done.stdout) == (0, "tag prod points at revision canary\n"), (
        done.stderr
    )
    served_by("canary")
    done = tag(control_plane, "set", "prod", "--revision", "default")
    assert done.stdout == "tag prod points at revision default (was canary)\n", done.stderr
    served_by("default")
    listed = tag(control_plane, "list").stdout.splitlines()
    assert listed[:2] == ["TAG   REVISION", "prod  default"]
    refused = tag(control_plane, "set", "canary", "--revision", "default")
    assert refused.returncode == 1
    assert "a tag may not shadow it" in refused.stderr
    done = tag(control_plane, "remove", "prod")
    assert done.stdout == "tag prod removed from revision default\n", done.stderr
    served_by(None)
    # The namespace itself was never written.
    assert (
        control_plane.kubectl(
            "get", "namespace", namespace, "-o", "jsonpath={.metadata.resourceVersion}"
        ).stdout
        == version
    )
