"""``serve --revision``: the process knows which revision it is, and says so on every pod."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonpatch
import pytest

from harness.server import running_server
from tests.builders import namespace, namespaces_yaml, pod, review
from tests.process.calls import decoded_patch, mutate
from tests.process.cli_process import run_cli

NAMESPACES = namespaces_yaml(namespace("shop", {"sidecar.mesh.io/rev": "canary"}))


def _status_of(answer: dict[str, object], obj: dict[str, object]) -> dict[str, object]:
    stored = jsonpatch.apply_patch(copy.deepcopy(obj), decoded_patch(answer))
    status: dict[str, object] = json.loads(
        stored["metadata"]["annotations"]["sidecar.mesh.io/status"]
    )
    return status


@pytest.mark.parametrize(
    ("args", "config", "revision"),
    [
        (["--revision", "canary"], "", "canary"),
        ([], "revision: canary\n", "canary"),
        (["--revision", "stable"], "revision: canary\n", "stable"),  # the flag wins
    ],
)
def test_the_served_revision_is_recorded_on_the_pods_it_injects(
    tmp_path: Path, args: list[str], config: str, revision: str
) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config)
    with running_server(
        tmp_path / "serve",
        namespaces_yaml=NAMESPACES,
        args=["--config", str(config_file), *args],
    ) as server:
        obj = pod(namespace="shop")
        answer = mutate(server.client(), review(obj, namespace="shop"))
        assert answer["response"]["allowed"] is True
        assert _status_of(answer, obj)["revision"] == revision
        assert f"injector revision: {revision}" in server.log()


def test_a_revision_that_cannot_name_objects_is_refused_at_the_command_line(
    tmp_path: Path,
) -> None:
    done = run_cli(
        "serve", "--revision", "Canary_1", "--cert-dir", str(tmp_path), tmp_path=tmp_path
    )
    assert done.code == 2
    assert "'Canary_1' is not a revision name" in done.err.decode()
