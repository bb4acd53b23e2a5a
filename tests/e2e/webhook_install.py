"""Kept for tests/e2e/test_cluster_check.py only; the install is harness.kube.install.

Delete this module when that file imports the harness.
"""

from harness.kube.install import (
    CONFIGURATION,
    NAMESPACE,
    SERVICE,
    InstalledWebhook,
    Object,
    create,
    installed_webhook,
    is_injected,
    pod_manifest,
    wait_until_injecting,
)

__all__ = [
    "CONFIGURATION",
    "NAMESPACE",
    "SERVICE",
    "InstalledWebhook",
    "Object",
    "create",
    "installed_webhook",
    "is_injected",
    "pod_manifest",
    "wait_until_injecting",
]
