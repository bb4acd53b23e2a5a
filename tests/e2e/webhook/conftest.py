"""The install the installed-webhook tests share: applied once for the package, removed after it.

Set-up (:mod:`harness.kube.install`): ``sidecar-injector certs`` and
``scripts/render_install.py`` into a temporary directory, ``kubectl apply`` of
the whole rendered install (the Deployment too: its pods are admitted but stay
Pending, as nothing runs them), and a local ``sidecar-injector serve`` behind
the install's Service via an EndpointSlice to 127.0.0.1. A test that stops
the process or cuts its namespace source starts it again before it ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.kube.control_plane import ControlPlane
from harness.kube.install import (
    InstalledWebhook,
    installed_webhook,
    wait_until_injecting,
)
from tests.e2e.webhook.shared import EFFECT_TIMEOUT, ENABLED, Namespaces


@pytest.fixture(scope="package")
def webhook(control_plane: ControlPlane) -> Iterator[InstalledWebhook]:
    """The rendered install, applied, served by a local process; removed afterwards."""
    with installed_webhook(control_plane) as install:
        yield install


@pytest.fixture(scope="package")
def namespaces(control_plane: ControlPlane) -> Iterator[Namespaces]:
    made = Namespaces(control_plane)
    try:
        yield made
    finally:
        made.delete_all()


@pytest.fixture(scope="package")
def meshed(control_plane: ControlPlane, webhook: InstalledWebhook, namespaces: Namespaces) -> str:
    """A namespace labelled ``sidecar-injection=enabled`` where injection is live."""
    name = namespaces.create("meshed", labels=ENABLED)
    wait_until_injecting(control_plane, name, timeout=EFFECT_TIMEOUT)
    return name
