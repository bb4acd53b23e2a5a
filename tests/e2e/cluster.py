"""Kept for tests/e2e/test_cluster_check.py only; the control plane is harness.kube.control_plane.

Delete this module when that file imports the harness.
"""

from harness.kube.control_plane import ControlPlane, KubectlError

__all__ = ["ControlPlane", "KubectlError"]
