"""``sidecar-injector policy`` as a command: what it prints, and its refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from webhook.engine.config import InjectorConfig
from webhook.policy.render import render_policy

CLI = str(Path(sys.executable).parent / "sidecar-injector")


def test_policy_refuses_to_render_for_a_config_cel_cannot_reproduce_from_the_cli(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [CLI, "policy", "--revision", "Not_A_Name"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "revision 'Not_A_Name' is not a valid name" in done.stderr


def test_policy_prints_what_render_policy_makes() -> None:
    done = subprocess.run([CLI, "policy"], capture_output=True, text=True, check=True)
    assert list(yaml.safe_load_all(done.stdout)) == render_policy(InjectorConfig())
