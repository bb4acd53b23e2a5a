"""The ``inject`` command as users run it: a real process, stdin and files, every output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonpatch
import pytest
import yaml

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web"},
    "spec": {"containers": [{"name": "web", "image": "nginx"}]},
}
ENABLE = ["--label", "sidecar-injection=enabled"]


def run(*args: str, stdin: bytes = b"", module: bool = False) -> subprocess.CompletedProcess[bytes]:
    command = (
        [sys.executable, "-m", "webhook"]
        if module
        else [str(Path(sys.executable).parent / "sidecar-injector")]
    )
    return subprocess.run(
        [*command, *args], input=stdin, capture_output=True, timeout=60, check=False
    )


def test_stdin_json_in_yaml_out_and_the_same_through_python_dash_m() -> None:
    console = run("inject", "-f", "-", *ENABLE, stdin=json.dumps(POD).encode())
    module = run("inject", "-f", "-", *ENABLE, stdin=json.dumps(POD).encode(), module=True)
    assert console.returncode == module.returncode == 0
    assert console.stdout == module.stdout
    injected = yaml.safe_load(console.stdout)
    assert [c["name"] for c in injected["spec"]["containers"]] == ["web"]
    assert [c["name"] for c in injected["spec"]["initContainers"]] == ["mesh-init", "mesh-proxy"]


def test_output_patch_applies_to_the_input_and_gives_output_json() -> None:
    body = json.dumps(POD).encode()
    patch = json.loads(run("inject", "-f", "-", *ENABLE, "-o", "patch", stdin=body).stdout)
    obj = json.loads(run("inject", "-f", "-", *ENABLE, "-o", "json", stdin=body).stdout)
    assert {op["op"] for op in patch} == {"add"}
    assert jsonpatch.apply_patch(POD, patch) == obj


def test_several_objects_print_as_a_list_in_json_and_as_documents_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}
    path.write_text(yaml.safe_dump_all([POD, service]))
    as_json = json.loads(run("inject", "-f", str(path), *ENABLE, "-o", "json").stdout)
    assert as_json["kind"] == "List"
    assert [item["kind"] for item in as_json["items"]] == ["Pod", "Service"]
    assert as_json["items"][1] == service
    docs = list(yaml.safe_load_all(run("inject", "-f", str(path), *ENABLE).stdout))
    assert [doc["kind"] for doc in docs] == ["Pod", "Service"]


def test_diff_shows_only_additions() -> None:
    result = run("inject", "-f", "-", *ENABLE, "-o", "diff", stdin=json.dumps(POD).encode())
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("--- Pod web (as given)")
    changed = [line for line in lines[2:] if line[:1] in "+-" and not line.startswith("@@")]
    assert changed
    assert all(line.startswith("+") for line in changed)
    assert any("mesh-proxy" in line for line in changed)


def test_skipped_pods_are_printed_unchanged_with_the_reason_on_stderr() -> None:
    result = run("inject", "-f", "-", "-o", "json", stdin=json.dumps(POD).encode())
    assert result.returncode == 0
    assert json.loads(result.stdout) == POD
    assert b"not injected: namespace default is not labelled" in result.stderr


def test_labels_override_the_namespaces_file(tmp_path: Path) -> None:
    namespaces = tmp_path / "ns.yaml"
    namespaces.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n"
        "    sidecar-injection: enabled\n    sidecar.mesh.io/log-level: info\n"
    )
    body = json.dumps(POD).encode()
    args = ["inject", "-f", "-", "-n", "shop", "--namespaces-file", str(namespaces), "-o", "json"]
    from_file = json.loads(run(*args, stdin=body).stdout)
    proxy_args = from_file["spec"]["initContainers"][1]["args"]
    assert proxy_args[proxy_args.index("--log-level") + 1] == "info"
    overridden = run(*args, "--label", "sidecar-injection=disabled", stdin=body)
    assert json.loads(overridden.stdout) == POD


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["-f", "missing.yaml"], b"", "missing.yaml: cannot read"),
        (["-f", "-"], b"\xff\xfe", "<stdin>: byte 0: not valid UTF-8"),
        (["-f", "-"], b"kind: [", "<stdin>: line 2 column 1"),
        (["-f", "-"], b"[1, 2]", "<stdin>: document 1: expected an object"),
        (
            ["-f", "-", "--label", "novalue"],
            json.dumps(POD).encode(),
            "--label 'novalue' is not KEY=VALUE",
        ),
        (
            ["-f", "-", "--config", "/nonexistent.yaml"],
            json.dumps(POD).encode(),
            "cannot read config",
        ),
        (
            ["-f", "-", "--namespaces-file", "/nonexistent.yaml"],
            json.dumps(POD).encode(),
            "nonexistent.yaml",
        ),
        (["-f", "-", *ENABLE], b"[" * 100000, "<stdin>"),
        (["-f", "-", *ENABLE], b"a: " + b"[" * 100000, "<stdin>"),
    ],
)
def test_bad_input_is_one_line_on_stderr_exit_1_and_nothing_on_stdout(
    args: list[str], stdin: bytes, message: str
) -> None:
    result = run("inject", *args, stdin=stdin)
    assert result.returncode == 1
    assert result.stdout == b""
    err = result.stderr.decode()
    assert err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err


def test_usage_errors_exit_2() -> None:
    result = run("inject", "-o", "xml", "-f", "-")
    assert result.returncode == 2
    assert b"invalid choice" in result.stderr
    assert result.stdout == b""
