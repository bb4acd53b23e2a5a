"""``sidecar-injector tag`` as people run it, against the fake API server: output and errors.

What the tags do to the selectors is in tests/unit/test_tags.py; the real API
server following them is in tests/e2e/revisions/.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from harness.fake_kube_api import FakeKubeAPI, ObjectStore
from harness.server import CLI
from tests.builders import WEBHOOK_CONFIGURATIONS, webhook_configuration


@pytest.fixture
def kubeconfig(fake_api: FakeKubeAPI, tmp_path: Path) -> Path:
    store = ObjectStore()
    fake_api.route("/", store)
    for revision, tags in (("default", ["prod"]), ("canary", [])):
        obj = webhook_configuration(revision, tags)
        store.objects[f"{WEBHOOK_CONFIGURATIONS}/{obj['metadata']['name']}"] = obj
    return fake_api.write_kubeconfig(tmp_path / "kubeconfig")


def _tag(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(
        [CLI, "tag", *args], capture_output=True, text=True, env=env, check=False, timeout=120
    )


def test_list_set_and_remove_say_what_they_did(kubeconfig: Path) -> None:
    config = ["--kubeconfig", str(kubeconfig)]
    listed = _tag("list", *config)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "TAG   REVISION",
        "prod  default",
        "revisions: canary (webhook), default (webhook)",
    ]
    moved = _tag("set", "prod", "--revision", "canary", *config)
    assert (moved.returncode, moved.stdout) == (
        0,
        "tag prod points at revision canary (was default)\n",
    )
    again = _tag("set", "prod", "--revision", "canary", *config)
    assert again.stdout == "tag prod already points at revision canary\n"
    document = json.loads(_tag("list", "-o", "json", *config).stdout)
    assert document["tags"] == [{"name": "prod", "revisions": ["canary"]}]
    assert {r["name"]: r["tags"] for r in document["revisions"]} == {
        "canary": ["prod"],
        "default": [],
    }
    removed = _tag("remove", "prod", *config)
    assert (removed.returncode, removed.stdout) == (0, "tag prod removed from revision canary\n")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["set", "canary", "--revision", "default"], 1, "a tag may not shadow it"),
        (["set", "prod", "--revision", "gone"], 1, "no revision gone is installed"),
        (["remove", "nothing"], 1, "no revision has the tag nothing"),
        (["set", "prod", "--revision", "Bad_Name"], 2, "is not a revision name"),
        (["set", "prod"], 2, "--revision"),
    ],
)
def test_errors_are_one_line_and_print_nothing_on_stdout(
    kubeconfig: Path, args: list[str], code: int, message: str
) -> None:
    done = _tag(*args, "--kubeconfig", str(kubeconfig))
    assert (done.returncode, done.stdout) == (code, ""), done.stderr
    assert message in done.stderr.splitlines()[-1], done.stderr
    assert "Traceback" not in done.stderr


def test_a_tag_name_is_escaped_where_it_meets_the_terminal(kubeconfig: Path) -> None:
    done = _tag("remove", "\x1b[31mred", "--kubeconfig", str(kubeconfig))
    assert done.returncode == 1
    assert "\x1b" not in done.stderr
    assert "\\x1b" in done.stderr


def test_an_unusable_kubeconfig_is_one_line(tmp_path: Path) -> None:
    done = _tag("list", "--kubeconfig", str(tmp_path / "missing"))
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
