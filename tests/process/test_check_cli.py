"""``sidecar-injector check`` as people run it: a broken kubeconfig or bad arguments.

An unusable kubeconfig is the first check failed (no traceback, the rest
skipped); a bad argument is a one-line error and exit status 2. The checks
against a cluster are in ``tests/unit/check/`` and ``tests/e2e/check/``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from harness.server import CLI


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(
        [CLI, "check", *args], capture_output=True, text=True, env=env, check=False, timeout=120
    )


def test_an_unusable_kubeconfig_is_a_failed_first_check_not_a_traceback(tmp_path: Path) -> None:
    done = _cli("--kubeconfig", str(tmp_path / "missing"), "-o", "json")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    document = json.loads(done.stdout)
    first, *rest = document["checks"]
    assert first["status"] == "fail"
    assert "cannot configure the Kubernetes client" in first["message"]
    assert "\n" not in first["message"]
    assert {c["status"] for c in rest} == {"skip"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "0"], "--timeout: must be more than 0"),
        (["--timeout", "nan"], "--timeout: must be more than 0"),
        (["--timeout", "soon"], "is not a number of seconds"),
        (["--max-namespaces", "0"], "--max-namespaces: must be at least 1"),
        (["--connect", "carrier-pigeon"], "invalid choice"),
        (["-o", "yaml"], "invalid choice"),
    ],
)
def test_bad_arguments_are_a_one_line_error_and_exit_2(args: list[str], message: str) -> None:
    done = _cli(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert message in done.stderr.splitlines()[-1]
