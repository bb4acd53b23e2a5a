"""Choosing a namespace source without a cluster imports no Kubernetes client (a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.builders import REPO


def test_choosing_a_file_or_no_source_does_not_import_the_kubernetes_client(
    tmp_path: Path,
) -> None:
    script = (
        "import sys\n"
        "from webhook.service.server import namespace_source_from_args\n"
        "namespace_source_from_args(namespaces_file=None, kubeconfig=None, in_cluster=False)\n"
        "assert 'kubernetes' not in sys.modules, 'kubernetes was imported'\n"
    )
    env = {"PATH": "/usr/bin:/bin"}  # no KUBECONFIG
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=REPO)
