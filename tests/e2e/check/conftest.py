"""The install the ``check`` tests share: applied once for the package, removed after it.

Set-up (:mod:`harness.kube.install`): the rendered install applied to the
session's control plane and served by a local ``sidecar-injector serve``
behind its Service, with the namespace ``MESHED`` opted in. Each test that
breaks the install puts it back before it ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.kube.control_plane import ControlPlane
from harness.kube.install import (
    NAMESPACE,
    InstalledWebhook,
    installed_webhook,
    wait_until_injecting,
)
from tests.e2e.check.shared import MESHED


@pytest.fixture(scope="package")
def install(control_plane: ControlPlane) -> Iterator[InstalledWebhook]:
    """The rendered install, applied and served, with ``MESHED`` opted in; removed afterwards."""
    try:
        with installed_webhook(control_plane) as installed:
            control_plane.create_namespace(MESHED, labels={"sidecar-injection": "enabled"})
            wait_until_injecting(control_plane, MESHED, timeout=60)
            try:
                yield installed
            finally:
                control_plane.kubectl("delete", "namespace", MESHED, "--wait=false", check=False)
    finally:
        # The install's teardown deletes mesh-system without waiting; the next
        # package or module to install into this session's control plane could
        # not create anything in it while it is terminating.
        control_plane.kubectl(
            "wait", "--for=delete", f"namespace/{NAMESPACE}", "--timeout=120s",
            check=False, timeout=150,
        )  # fmt: skip
