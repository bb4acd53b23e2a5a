"""The Helm chart in policy mode: the policies ``sidecar-injector policy`` renders, shipped
or passed, with the chart's own bindings; and the refusals when they would not match.

Helm cannot run the generator, so the chart ships its rendering for the default
config and revision (``files/policy.yaml``, the same file as
``manifests/policy/policy.yaml``) and takes any other through ``--set-file
policy=...``, checking the config and revision the policies record against
the release's own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.server import CLI
from tests.process.chart_objects import CHART, run_template, template
from webhook.engine.config import InjectorConfig
from webhook.manifests.config_file import parse_config
from webhook.policy.render import render_policy

REPO = CHART.parents[1]
SHIPPED = CHART / "files" / "policy.yaml"

Object = dict[str, Any]


def _by_name(objects: list[Object]) -> dict[tuple[str, str], Object]:
    return {
        (o["kind"], o["metadata"]["name"]): o for o in objects if o["kind"] not in ("Namespace",)
    }


def test_the_chart_ships_the_policies_of_manifests_policy() -> None:
    assert SHIPPED.read_bytes() == (REPO / "manifests" / "policy" / "policy.yaml").read_bytes(), (
        "charts/sidecar-injector/files/policy.yaml is stale: make policy-manifests"
    )


def test_with_default_values_policy_mode_renders_manifests_policy_and_nothing_of_the_webhook() -> (
    None
):
    objects = template("--set", "mode=policy")
    assert {o["kind"] for o in objects} == {
        "Namespace",
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    shipped = [o for o in yaml.safe_load_all(SHIPPED.read_text()) if o]
    assert _by_name(objects) == _by_name(shipped)


def _webhook_config(tmp_path: Path, *args: str) -> Path:
    """The config a release with ``args`` gives its injector (its ConfigMap), as a file."""
    (config_map,) = [o for o in template(*args) if o["kind"] == "ConfigMap"]
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"], encoding="utf-8")
    return path


def _policy(tmp_path: Path, config: Path, revision: str) -> Path:
    rendered = subprocess.run(
        [CLI, "policy", "--config", str(config), "--revision", revision],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = tmp_path / "policy.yaml"
    path.write_text(rendered, encoding="utf-8")
    return path


def test_a_revision_with_its_own_config_installs_the_policies_rendered_from_it(
    tmp_path: Path,
) -> None:
    values = ["--set", "revision=canary", "--set", "config.proxy.version=v1.41.0"]
    config = _webhook_config(tmp_path, *values)
    policy = _policy(tmp_path, config, "canary")
    objects = template("--set", "mode=policy", *values, "--set-file", f"policy={policy}")
    rendered = render_policy(parse_config(config.read_text()), revision="canary")
    assert _by_name(objects) == _by_name(rendered)
    names = sorted(o["metadata"]["name"] for o in objects if o["kind"].endswith("Binding"))
    assert names == sorted(
        2 * ["sidecar-injector-canary-rev-pod", "sidecar-injector-canary-rev-namespace"]
    )
    # The chart's failurePolicy reaches both policies.
    ignoring = template(
        "--set", "mode=policy", *values, "--set-file", f"policy={policy}",
        "--set", "failurePolicy=Ignore",
    )  # fmt: skip
    assert {o["spec"]["failurePolicy"] for o in ignoring if "Binding" not in o["kind"]} == {
        "Ignore"
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "config.proxy.version=v1.41.0"],
            "mode policy with a config other than the chart's default needs the policies"
            " rendered from it: save this release's config, {",
        ),
        (
            ["--set", "revision=canary"],
            "mode policy for revision canary needs its policies rendered for it",
        ),
    ],
)
def test_policy_mode_without_matching_policies_fails_saying_how_to_render_them(
    args: list[str], message: str
) -> None:
    done = run_template("--set", "mode=policy", *args)
    assert done.returncode != 0
    assert message in done.stderr
    assert "sidecar-injector policy --config config.json --revision" in done.stderr


def test_policies_rendered_for_another_config_or_revision_are_refused(tmp_path: Path) -> None:
    default = tmp_path / "default.yaml"
    default.write_text(
        yaml.safe_dump_all(render_policy(InjectorConfig(), revision="canary")), encoding="utf-8"
    )
    done = run_template(
        "--set", "mode=policy", "--set", "revision=canary", "--set-file", f"policy={default}"
    )  # fmt: skip
    assert done.returncode != 0
    assert "the policy value was rendered from another config than this release's" in done.stderr
    done = run_template("--set", "mode=policy", "--set-file", f"policy={default}")
    assert done.returncode != 0
    assert "it was rendered for another revision" in done.stderr
