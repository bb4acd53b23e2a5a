"""Golden files: every input manifest through the public CLI, compared byte for byte.

The same inputs are replayed through ``/mutate`` and ``/preview`` by the
service tests, so the three paths are held to one set of answers.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
from pathlib import Path

import orjson
import pytest
import yaml

from harness.validation import validate_injected
from tests.builders import GOLDEN
from webhook.cli.commands import main

INPUTS = GOLDEN / "inputs"
EXPECTED = GOLDEN / "expected"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
CASES = sorted(path.stem for path in INPUTS.glob("*.yaml"))


def golden_args(name: str) -> list[str]:
    """The ``# args:`` line of an input."""
    first = (INPUTS / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith("# args:"), f"{name}.yaml must start with '# args:'"
    return shlex.split(first.removeprefix("# args:"))


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run the CLI in-process (the golden inputs are many; a process each is slow)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def run_golden(name: str, output: str) -> tuple[int, str, str]:
    """One golden input through ``inject`` with its own arguments, from the golden folder."""
    cwd = Path.cwd()
    os.chdir(GOLDEN)
    try:
        return run_cli(["inject", "-f", f"inputs/{name}.yaml", *golden_args(name), "-o", output])
    finally:
        os.chdir(cwd)


def check(path: Path, actual: str | None) -> None:
    """Compare with (or, under UPDATE_GOLDEN=1, rewrite) one expected file."""
    if UPDATE:
        if actual is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(actual)
        return
    if actual is None:
        assert not path.exists(), f"{path.name} should not exist (input is refused)"
        return
    assert path.exists(), f"{path.name} is missing; run with UPDATE_GOLDEN=1 and review"
    assert actual == path.read_text(), f"{path.name} differs; UPDATE_GOLDEN=1 to accept"


def test_there_are_at_least_thirty_golden_inputs() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", CASES)
def test_golden_output_matches(name: str) -> None:
    code, out_yaml, err = run_golden(name, "yaml")
    patch_code, out_patch, patch_err = run_golden(name, "patch")
    assert (code, err) == (patch_code, patch_err), "-o patch must decide exactly as -o yaml"
    check(EXPECTED / f"{name}.stderr", f"exit {code}\n{err}")
    if name.startswith("refuse-"):
        assert code != 0, "refusals exit non-zero"
        assert out_yaml == out_patch == "", "nothing is printed on stdout after a refusal"
        assert err.count("\n") == 1, "a refusal is one line"
        assert "Traceback" not in err
        check(EXPECTED / f"{name}.yaml", None)
        check(EXPECTED / f"{name}.patch.json", None)
    else:
        assert code == 0
        check(EXPECTED / f"{name}.yaml", out_yaml)
        check(EXPECTED / f"{name}.patch.json", out_patch)


def test_no_expected_file_lacks_an_input() -> None:
    stems = {path.name.split(".")[0] for path in EXPECTED.iterdir()}
    orphans = stems - set(CASES)
    assert not orphans, f"expected files without inputs: {sorted(orphans)}"


@pytest.mark.parametrize("name", [c for c in CASES if not c.startswith("refuse-")])
def test_every_golden_output_would_be_accepted_by_the_apiserver(name: str) -> None:
    code, out, _ = run_golden(name, "yaml")
    assert code == 0
    for obj in yaml.safe_load_all(out):
        validate_injected(obj)


def test_the_injected_example_pod_is_under_6_kb_as_compact_json() -> None:
    # Every watcher of every meshed pod receives it again on each status update.
    example = GOLDEN.parent.parent / "examples" / "pod.yaml"
    code, out, err = run_cli(
        ["inject", "-f", str(example), "--label", "sidecar-injection=enabled", "-o", "json"]
    )
    assert code == 0, err
    obj = orjson.loads(out)
    assert obj["spec"]["initContainers"][1]["name"] == "mesh-proxy", "injected, default settings"
    assert len(orjson.dumps(obj)) < 6000
