"""Choosing no cluster to write Events to imports no Kubernetes client (a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys


def test_choosing_no_cluster_does_not_import_the_kubernetes_client() -> None:
    code = (
        "import sys\n"
        "from webhook.service.metrics import Metrics\n"
        "from webhook.service.server import ServeSettings, _event_recorder\n"
        "assert _event_recorder(ServeSettings(), Metrics()) is None\n"
        "assert 'kubernetes' not in sys.modules, 'kubernetes was imported'\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
