"""A kubeconfig and every file it names are read within bounds: the real commands, and exec plugins.

``check`` and ``serve`` refuse a kubeconfig naming a file that never ends
with one line, small and before anything is sent; exec plugins are programs
the kubeconfig runs, still left to the client. The reading itself is in
``tests/unit/test_kubeconfig_bounds.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.fake_kube_api import FakeKubeAPI
from tests.builders import dev_zero, fifo, kubeconfig
from tests.process.cli_process import PEAK_RSS_LIMIT_KIB, run_cli
from webhook.cluster import kube


def test_an_exec_plugin_is_still_run_by_the_client(tmp_path: Path) -> None:
    # Exec plugins are programs the kubeconfig runs with the user's rights:
    # left to the client, with the kubeconfig's directory as their cwd.
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, os\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind':"
        " 'ExecCredential', 'status': {'token': os.path.basename(os.getcwd())}}))\n"
    )
    exec_config = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": sys.executable,
        "args": [str(plugin)],
        "interactiveMode": "Never",
    }
    path = kubeconfig(tmp_path / "config", user={"exec": exec_config})
    configuration = kube.load_configuration(path)
    assert configuration.api_key == {"BearerToken": f"Bearer {tmp_path.name}"}


# --- the real command line ---------------------------------------------------------------


@pytest.mark.parametrize("make", [dev_zero, fifo])
def test_check_with_a_token_file_that_never_ends_fails_its_first_check_small_and_fast(
    fake_api: FakeKubeAPI, tmp_path: Path, make: Any
) -> None:
    bad = make(tmp_path / "token")
    path = kubeconfig(tmp_path / "config", server=fake_api.url, user={"tokenFile": "token"})
    ran = run_cli("check", "--kubeconfig", str(path), "-o", "json", tmp_path=tmp_path)
    assert ran.code == 1
    assert ran.err == b""
    first, *rest = json.loads(ran.out)["checks"]
    assert first["status"] == "fail"
    assert first["message"] == (
        f"cannot configure the Kubernetes client: {path}: user 'u': tokenFile: {bad}:"
        f" cannot read: {'a character device' if make is dev_zero else 'a FIFO'}, not a regular file"
    )
    assert {check["status"] for check in rest} == {"skip"}
    assert ran.peak_kib < PEAK_RSS_LIMIT_KIB
    assert fake_api.calls == []  # nothing was sent with a half-read credential


def test_serve_with_a_kubeconfig_naming_dev_zero_is_a_one_line_error(tmp_path: Path) -> None:
    certs_dir = tmp_path / "certs"
    assert run_cli("certs", "--out", str(certs_dir), tmp_path=tmp_path).code == 0
    bad = dev_zero(tmp_path / "ca.crt")
    path = kubeconfig(tmp_path / "config", cluster={"certificate-authority": "ca.crt"})
    ran = run_cli(
        "serve", "--cert-dir", str(certs_dir), "--port", "1", "--kubeconfig", str(path),
        tmp_path=tmp_path,
    )  # fmt: skip
    assert ran.code == 1
    assert ran.out == b""
    assert ran.err_lines[-1] == (
        f"sidecar-injector: error: cannot configure the Kubernetes client: {path}:"
        f" cluster 'c': certificate-authority: {bad}: cannot read: a character device,"
        " not a regular file"
    )
    assert ran.peak_kib < PEAK_RSS_LIMIT_KIB


def test_check_reads_kubeconfig_from_the_environment_within_the_same_bounds(
    tmp_path: Path,
) -> None:
    bad = fifo(tmp_path / "token")
    path = kubeconfig(tmp_path / "config", user={"tokenFile": str(bad)})
    ran = run_cli("check", tmp_path=tmp_path, env={"KUBECONFIG": str(path)})
    assert ran.code == 1
    assert f"tokenFile: {bad}: cannot read: a FIFO, not a regular file" in ran.out.decode()
