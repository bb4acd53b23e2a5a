"""What people read on a terminal from the real command line never carries a raw control.

``inject`` wrote a pod's name raw to stderr (an OSC title and a clear-screen
sequence reached the terminal) and ``check`` printed server strings raw;
these tests send real escape sequences through the real commands (the
function itself, the app and the log lines are in
``tests/unit/test_terminal_escapes.py``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.fake_kube_api import FakeKubeAPI
from tests import builders
from tests.process.cli_process import Ran, run_cli
from webhook.engine.values import escape_controls

# An OSC window title, a clear screen, and an 8-bit CSI.
HOSTILE = "web\x1b]0;title\x07\x1b[2J\x9b"
SHOWN = "web\\x1b]0;title\\x07\\x1b[2J\\x9b"
RAW = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def raw_controls(text: str) -> list[str]:
    """The characters a terminal would act on (newlines between lines aside)."""
    return RAW.findall(text)


# --- the command line --------------------------------------------------------------------


def pod(name: str = HOSTILE, container: str = "app", **metadata: Any) -> bytes:
    """A pod named ``name`` whose one container is ``container``, as bytes."""
    containers = [{"name": container, "image": "nginx"}]
    return orjson.dumps(builders.pod(name, containers=containers, **metadata))


def cli(tmp_path: Path, *args: str, stdin: bytes = b"") -> Ran:
    given_input = tmp_path / "stdin"
    given_input.write_bytes(stdin)
    return run_cli(*args, stdin=given_input, tmp_path=tmp_path)


def assert_clean_stderr(ran: Ran, *expected: str) -> None:
    err = ran.err.decode()
    assert raw_controls(err) == [], err
    for line in expected:
        assert line in err.splitlines(), err


def test_inject_writes_a_skipped_pods_name_escaped(tmp_path: Path) -> None:
    ran = cli(tmp_path, "inject", "-f", "-", stdin=pod())
    assert ran.code == 0
    assert_clean_stderr(
        ran,
        f"sidecar-injector: Pod {SHOWN}: not injected: namespace default is not labelled"
        " sidecar-injection=enabled and the pod does not ask for injection",
    )


def test_inject_writes_warnings_about_a_pod_escaped(tmp_path: Path) -> None:
    ran = cli(
        tmp_path,
        "inject", "-f", "-", "--label", "sidecar-injection=enabled",
        "--annotation", "sidecar.mesh.io/unknown=1",
        stdin=pod(),
    )  # fmt: skip
    assert ran.code == 0
    assert_clean_stderr(
        ran,
        f"sidecar-injector: warning: Pod {SHOWN}: namespace annotation sidecar.mesh.io/unknown"
        " is not a known setting and is ignored",
    )


def test_inject_writes_a_refusal_naming_the_pod_escaped(tmp_path: Path) -> None:
    ran = cli(
        tmp_path,
        "inject", "-f", "-", "--label", "sidecar-injection=enabled",
        stdin=pod(container="mesh-proxy"),
    )  # fmt: skip
    assert (ran.code, ran.out) == (1, b"")
    assert_clean_stderr(ran)
    assert ran.err_lines[-1].startswith(f"sidecar-injector: error: Pod {SHOWN}: ")


def test_uninject_writes_a_pods_name_escaped(tmp_path: Path) -> None:
    ran = cli(tmp_path, "uninject", "-f", "-", stdin=pod())
    assert ran.code == 0
    assert_clean_stderr(ran)
    assert ran.err_lines[-1].startswith(f"sidecar-injector: Pod {SHOWN}: nothing to remove: ")


def test_a_file_name_is_written_escaped(tmp_path: Path) -> None:
    name = str(tmp_path / "\x1b[2Jpod.yaml")
    ran = cli(tmp_path, "inject", "-f", name)
    assert (ran.code, ran.out) == (1, b"")
    assert_clean_stderr(ran, f"sidecar-injector: error: {escape_controls(name)}: cannot read:"
                        " No such file or directory")  # fmt: skip


def test_an_argument_error_is_written_escaped(tmp_path: Path) -> None:
    ran = cli(tmp_path, "inject", "-f", "-", "-o", "\x1b[2J")
    assert ran.code == 2
    assert_clean_stderr(ran)
    assert "invalid choice: '\\x1b[2J'" in ran.err_lines[-1]


@pytest.mark.parametrize("output", ["text", "json"])
def test_check_shows_what_the_server_says_escaped(
    fake_api: FakeKubeAPI, tmp_path: Path, output: str
) -> None:
    api = fake_api
    api.version = f"v1.33.0-{HOSTILE}"
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    ran = run_cli(
        "check", "--kubeconfig", str(kubeconfig), "-o", output, "--timeout", "5",
        tmp_path=tmp_path,
    )  # fmt: skip
    out = ran.out.decode()
    assert raw_controls(out) == []
    if output == "json":
        first = json.loads(out)["checks"][0]
        # Messages are for people, escaped even for jq -r; data keeps its value.
        assert first["message"] == f"{api.url} answers (v1.33.0-{SHOWN})"
        assert first["data"]["version"] == f"v1.33.0-{HOSTILE}"
    else:
        assert f"PASS  kubernetes-api         {api.url} answers (v1.33.0-{SHOWN})" in out


def test_json_output_escapes_what_json_allows_raw_and_keeps_the_data(tmp_path: Path) -> None:
    name = "web\x9b\u202e\x7f"
    ran = cli(tmp_path, "inject", "-f", "-", "-o", "json", stdin=pod(name=name))
    assert ran.code == 0
    assert raw_controls(ran.out.decode()) == []
    assert "web\\u009b\\u202e\\u007f" in ran.out.decode()
    assert json.loads(ran.out)["metadata"]["name"] == name


def test_diff_output_names_the_object_escaped(tmp_path: Path) -> None:
    ran = cli(
        tmp_path,
        "inject", "-f", "-", "-o", "diff", "--label", "sidecar-injection=enabled",
        stdin=pod(),
    )  # fmt: skip
    assert ran.code == 0
    out = ran.out.decode()
    assert raw_controls(out) == []
    assert out.startswith(f"--- Pod {SHOWN} (as given)\n+++ Pod {SHOWN} (injected)\n")
