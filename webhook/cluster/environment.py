"""Whether this process runs in a cluster; a module of its own, so asking imports no client."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

_IN_CLUSTER_ENV: Final = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
# Where the kubelet mounts a pod's service account: token, ca.crt, namespace.
SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_IN_CLUSTER_TOKEN: Final = SERVICE_ACCOUNT_DIR / "token"


def running_in_cluster() -> bool:
    """Whether this process runs in a pod with a service account (what in-cluster config needs)."""
    return all(os.environ.get(name) for name in _IN_CLUSTER_ENV) and _IN_CLUSTER_TOKEN.is_file()
