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
# A status annotation as the injector writes it, on pods whose lists are not lists.
STATUS = {"sidecar.mesh.io/status": '{"version":"0","initContainers":["mesh-init"]}'}


def client_shaped(**spec: object) -> bytes:
    """POD with the status annotation and ``spec`` fields of the wrong type."""
    pod = {**POD, "metadata": {"name": "web", "annotations": STATUS}}
    return json.dumps({**pod, "spec": {**POD["spec"], **spec}}).encode()


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
        (["-f", "-"], b"kind: [", "<stdin>: line "),
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
        (
            ["-f", "-", *ENABLE, "-o", "json"],
            client_shaped(initContainers=7),
            "Pod web: spec.initContainers is not a list",
        ),
        (
            ["-f", "-", *ENABLE, "-o", "json"],
            client_shaped(containers=1),
            "Pod web: spec.containers is missing or empty",
        ),
        (
            ["-f", "-", *ENABLE, "-o", "json"],
            client_shaped(initContainers=[{"name": ["mesh-init"]}]),
            "Pod web: spec.initContainers[0] has no name",
        ),
        (
            ["-f", "-", *ENABLE, "-o", "json"],
            b"kind: Pod\napiVersion: v1\nmetadata: {name: web}\nspec:\n  nodeSelector: {1: 2}\n",
            "<stdin>: line 5 column 18: a mapping key must be a string, not a number (1): quote it",
        ),
        (
            ["-f", "-", *ENABLE, "-o", "json"],
            b"kind: Pod\napiVersion: v1\nmetadata: {name: web}\nspec:\n  priority: 1"
            + b"0" * 30
            + b"\n",
            "<stdin>: line 5 column 13: number 1000000000000000000000000000000 is out of range",
        ),
        (
            ["-f", "-", *ENABLE, "-o", "json"],
            b"kind: Pod\napiVersion: v1\nmetadata: {name: web}\nspec:\n  priority: "
            + b"9" * 5000
            + b"\n",
            "<stdin>: line 5 column 13: number 999",
        ),
        (
            ["-f", "-", *ENABLE, "-o", "yaml"],
            b'{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web"},"spec":{"priority":'
            + b"1" * 30
            + b',"containers":[{"name":"a","image":"b"}]}}',
            "<stdin>: number 111111111111111111111111111111 is out of range",
        ),
        (
            ["-f", "-", *ENABLE, "-o", "yaml"],
            b'{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web"},"spec":{"priority":'
            b'-9223372036854775809,"containers":[{"name":"a","image":"b"}]}}',
            "<stdin>: number -9223372036854775809 is out of range",
        ),
        (
            ["-f", "-", *ENABLE, "-o", "json"],
            b"kind: Pod\napiVersion: v1\nmetadata: {name: web}\n"
            b"spec: {containers: [{name: a, image: b}]}\nx: !!binary aGk=\n",
            "the output cannot be written as JSON",
        ),
        (
            ["-f", "-", *ENABLE, "-o", "json"],
            b"kind: Pod\napiVersion: v1\nmetadata: {name: web}\n"
            b"spec: {containers: [{name: a, image: b}]}\nx: " + b"[" * 300 + b"]" * 300 + b"\n",
            "input is nested too deeply",
        ),
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inject", "-o", "xml", "-f", "-"], b"invalid choice"),
        (["serve", "--port", "70000"], b"argument --port: 70000 is not a port: 1 to 65535"),
        (["serve", "--port", "0"], b"argument --port: 0 is not a port"),
        (["serve", "--port", "https"], b"argument --port: 'https' is not a port number"),
        (["certs", "--days", "99999999"], b"argument --days: must be 1 to 36500 days"),
        (["certs", "--days", "0"], b"argument --days: must be 1 to 36500 days"),
        (["inject", "-n", "Demo", "-f", "-"], b"'Demo' is not a valid namespace name"),
        (["inject", "-n", "demo\n", "-f", "-"], b"'demo\\n' is not a valid namespace name"),
        (["check", "-n", "a" * 64], b"is not a valid namespace name"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: bytes) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stdout == b""


# --- uninject ----------------------------------------------------------------------------


def injected_yaml(*objects: dict[str, object]) -> bytes:
    result = run("inject", "-f", "-", *ENABLE, stdin=yaml.safe_dump_all(objects).encode())
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_uninject_gives_back_the_input_from_stdin_in_yaml_and_json() -> None:
    back = run("uninject", "-f", "-", stdin=injected_yaml(POD))
    assert back.returncode == 0, back.stderr
    assert yaml.safe_load(back.stdout) == POD
    assert back.stderr == b""
    as_json = run("uninject", "-f", "-", "-o", "json", stdin=injected_yaml(POD))
    assert json.loads(as_json.stdout) == POD


def test_uninject_reads_files_lists_and_every_workload_kind(tmp_path: Path) -> None:
    template = {"metadata": {"labels": {"app": "web"}}, "spec": POD["spec"]}
    workloads = [
        POD,
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
         "spec": {"template": template}},
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
         "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}},
    ]  # fmt: skip
    listed = {
        "apiVersion": "v1",
        "kind": "List",
        "items": list(yaml.safe_load_all(injected_yaml(*workloads))),
    }
    path = tmp_path / "injected.json"
    path.write_text(json.dumps(listed))
    back = run("uninject", "-f", str(path), "-o", "json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout) == {"apiVersion": "v1", "kind": "List", "items": workloads}


def test_uninject_patch_applies_and_diff_shows_only_removals() -> None:
    injected = yaml.safe_load(injected_yaml(POD))
    body = json.dumps(injected).encode()
    patch = json.loads(run("uninject", "-f", "-", "-o", "patch", stdin=body).stdout)
    assert {op["op"] for op in patch} <= {"remove", "replace"}
    assert jsonpatch.apply_patch(injected, patch) == POD
    lines = run("uninject", "-f", "-", "-o", "diff", stdin=body).stdout.decode().splitlines()
    assert lines[1].startswith("+++ Pod web (uninjected)")
    changed = [line for line in lines[2:] if line[:1] in "+-" and not line.startswith("@@")]
    assert changed
    assert all(line.startswith("-") for line in changed)


def test_uninject_leaves_a_look_alike_alone_and_says_so() -> None:
    look_alike = {**POD, "spec": {"containers": [*POD["spec"]["containers"], {"name": "mesh-proxy", "image": "mine"}]}}  # fmt: skip
    result = run("uninject", "-f", "-", "-o", "json", stdin=json.dumps(look_alike).encode())
    assert result.returncode == 0
    assert json.loads(result.stdout) == look_alike
    assert result.stderr.decode() == (
        "sidecar-injector: Pod web: nothing to remove: no sidecar.mesh.io/status annotation\n"
    )


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (b"\xff", "<stdin>: byte 0: not valid UTF-8"),
        (
            b"a: &x 1\nb: *x\n",
            "<stdin>: line 1 column 4: YAML anchors and aliases are not accepted",
        ),
        (
            json.dumps(
                {**POD, "metadata": {"name": "web", "annotations": {"sidecar.mesh.io/status": "{"}}}
            ).encode(),
            "Pod web: metadata.annotations[sidecar.mesh.io/status] is not JSON",
        ),
        (b"[" * 100000, "<stdin>"),
    ],
)
def test_uninject_bad_input_is_one_line_exit_1_and_nothing_on_stdout(
    stdin: bytes, message: str
) -> None:
    result = run("uninject", "-f", "-", stdin=stdin)
    assert result.returncode == 1
    assert result.stdout == b""
    err = result.stderr.decode()
    assert err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err


def test_inject_refuses_yaml_aliases_too() -> None:
    result = run("inject", "-f", "-", *ENABLE, stdin=b"a: &x 1\nb: *x\n")
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"YAML anchors and aliases are not accepted" in result.stderr


def test_json_numbers_come_back_as_written_up_to_64_bits() -> None:
    # orjson reads an integer past 64 bits as a float; those are refused (see
    # above), and everything up to 2**64-1, or digits inside strings, is kept.
    body = (
        b'{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","annotations":'
        b'{"x":"123456789012345678901234"}},"spec":{"priority":18446744073709551615,'
        b'"containers":[{"name":"a","image":"b"}]}}'
    )
    result = run("inject", "-f", "-", "-o", "json", stdin=body)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["spec"]["priority"] == 18446744073709551615
    assert out["metadata"]["annotations"]["x"] == "123456789012345678901234"


def test_commands_without_a_config_do_not_load_its_model() -> None:
    """``certs`` and ``tag`` (run by the hundred in scripts and tests) start without the
    config file's pydantic model, the dearest import (``inject`` loads it to read one)."""
    probe = (
        "import sys; from webhook.cli.commands import _build_parser; "
        "_build_parser().parse_args({argv}); print('pydantic' in sys.modules)"
    )
    for argv in (["certs", "--out", "x"], ["tag", "list"]):
        done = subprocess.run(
            [sys.executable, "-c", probe.format(argv=argv)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr
