"""What people read never carries a raw control character or escape sequence.

Object names, file names and what a cluster says reach terminals: ``inject``
wrote a pod's name raw to stderr (an OSC title and a clear-screen sequence
reached the terminal), ``check`` printed server strings raw, and kubectl
shows ``/mutate``'s ``status.message`` and warnings to its user as they are.
``escape_controls`` writes them out instead; these tests send real escape
sequences through the real command line and through the app.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from tests.process.cli_process import Ran, run_cli
from tests.support.fake_kube_api import FakeKubeAPI
from webhook.cluster.namespaces_file import NamespaceInfo, StaticNamespaces
from webhook.engine.config import InjectorConfig
from webhook.engine.values import escape_controls
from webhook.service import admission
from webhook.service.answers import warning_header
from webhook.service.app import create_app

# An OSC window title, a clear screen, and an 8-bit CSI.
HOSTILE = "web\x1b]0;title\x07\x1b[2J\x9b"
SHOWN = "web\\x1b]0;title\\x07\\x1b[2J\\x9b"
RAW = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def raw_controls(text: str) -> list[str]:
    """The characters a terminal would act on (newlines between lines aside)."""
    return RAW.findall(text)


# --- the function --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text", "plain text"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("\x1b[2J", "\\x1b[2J"),
        ("a\x9bb", "a\\x9bb"),
        ("\x00\x08\x0d\x7f", "\\x00\\x08\\x0d\\x7f"),
        ("line\nbreak\ttab", "line\\x0abreak\\x09tab"),
        ("abc\u202edcba", "abc\\u202edcba"),
        ("\u2066isolate\u2069", "\\u2066isolate\\u2069"),
        ("\u2028", "\\u2028"),
        ("naïve café 日本 ✓", "naïve café 日本 ✓"),
        ("already \\x1b shown", "already \\x1b shown"),
    ],
)
def test_what_a_terminal_acts_on_is_written_out_and_the_rest_left_alone(
    text: str, shown: str
) -> None:
    assert escape_controls(text) == shown


@given(st.text())
def test_escaping_leaves_nothing_a_terminal_acts_on_and_is_idempotent(text: str) -> None:
    shown = escape_controls(text)
    assert RAW.search(shown) is None
    assert "\n" not in shown
    assert escape_controls(shown) == shown


# --- the command line --------------------------------------------------------------------


def pod(name: str = HOSTILE, container: str = "app", **metadata: Any) -> bytes:
    return orjson.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, **metadata},
            "spec": {"containers": [{"name": container, "image": "nginx"}]},
        }
    )


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
def test_check_shows_what_the_server_says_escaped(tmp_path: Path, output: str) -> None:
    api = FakeKubeAPI().start()
    api.version = f"v1.33.0-{HOSTILE}"
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
            f"clusters: [{{name: c, cluster: {{server: '{api.url}'}}}}]\n"
            "users: [{name: u, user: {token: t}}]\n"
            "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        )
        ran = run_cli(
            "check", "--kubeconfig", str(kubeconfig), "-o", output, "--timeout", "5",
            tmp_path=tmp_path,
        )  # fmt: skip
    finally:
        api.stop()
    out = ran.out.decode()
    assert raw_controls(out) == []
    if output == "json":
        first = json.loads(out)["checks"][0]
        # Messages are for people, escaped even for jq -r; data keeps its value.
        assert first["message"] == f"{api.url} answers (v1.33.0-{SHOWN})"
        assert first["data"]["version"] == f"v1.33.0-{HOSTILE}"
    else:
        assert f"PASS  kubernetes-api         {api.url} answers (v1.33.0-{SHOWN})" in out


# --- admission and preview -----------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> TestClient:
    source = StaticNamespaces({"demo": NamespaceInfo("demo", {"sidecar-injection": "enabled"})})
    return TestClient(create_app(config=InjectorConfig(), namespaces=source))


def review(obj: bytes) -> bytes:
    return orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "demo",
                "operation": "CREATE",
                "object": orjson.loads(obj),
            },
        }
    )


def test_mutate_refuses_a_pod_with_its_name_escaped_in_the_message(client: TestClient) -> None:
    answer = client.post(
        "/mutate",
        content=review(pod(container="mesh-proxy")),
        headers={"Content-Type": "application/json"},
    ).json()["response"]
    assert answer["allowed"] is False
    message = answer["status"]["message"]
    assert message.startswith(f"Pod {SHOWN}: ")
    assert raw_controls(message) == []


def test_admission_messages_and_warnings_are_escaped_whoever_wrote_them() -> None:
    refused = admission.denied("u", HOSTILE, warnings=[HOSTILE])
    assert refused["status"]["message"] == SHOWN
    assert refused["warnings"] == [SHOWN]
    assert admission.allowed("u", warnings=[HOSTILE])["warnings"] == [SHOWN]
    assert admission.patched("u", [], warnings=[HOSTILE])["warnings"] == [SHOWN]


def test_preview_errors_and_warnings_are_escaped(client: TestClient) -> None:
    refused = client.post(
        "/preview",
        content=pod(container="mesh-proxy"),
        headers={"Content-Type": "application/json"},
        params={"namespace": "demo"},
    )
    assert refused.status_code == 400
    assert refused.json()["error"].startswith(f"Pod {SHOWN}: ")
    assert raw_controls(refused.text) == []
    assert "\\u001b" not in refused.text
    assert warning_header(HOSTILE) == f'299 - "{SHOWN.replace(chr(92), chr(92) * 2)}"'


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


def test_serve_log_lines_escape_what_json_allows_raw() -> None:
    import logging

    from webhook.service.logs import JsonFormatter

    record = logging.LogRecord("webhook", logging.INFO, __file__, 1, HOSTILE, None, None)
    record.fields = {"name": HOSTILE}
    line = JsonFormatter().format(record)
    assert raw_controls(line) == []
    assert json.loads(line)["name"] == HOSTILE
