"""The locks and the container refusals through the real ``inject`` command.

A refused pod exits non-zero with the one-line message on stderr and nothing
on stdout; a config that locks something that is not a setting is refused
the same way. ``/preview`` and ``/mutate`` are in ``tests/unit/test_locks_paths.py``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson

from harness.server import CLI
from tests import builders

P = "sidecar.mesh.io/"
CONFIG_YAML = "lockedSettings: [xds-address, include-outbound-cidrs]\n"
XDS = {P + "xds-address": "xds.mesh-system:15010"}
ATTACKER = {P + "xds-address": "attacker.example.com:443"}
LOCK_MESSAGE = (
    "Pod web: pod annotation sidecar.mesh.io/xds-address='attacker.example.com:443' is refused:"
    " the injector config locks sidecar.mesh.io/xds-address (lockedSettings) to what the"
    " namespace and the config decide, here 'xds.mesh-system:15010' (namespace annotation);"
    " remove the annotation, or set it to that value"
)


def pod(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """Pod ``web`` with these annotations, its one container ``app``."""
    return builders.pod(image="nginx", annotations=annotations or {})


def run_inject(tmp_path: Path, obj: dict[str, Any]) -> subprocess.CompletedProcess[bytes]:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG_YAML)
    return subprocess.run(
        [
            CLI,
            "inject",
            "-f",
            "-",
            "--config",
            str(config),
            "--label",
            "sidecar-injection=enabled",
            "--annotation",
            f"{P}xds-address=xds.mesh-system:15010",
        ],
        input=orjson.dumps(obj),
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_inject_exits_non_zero_with_the_one_line_refusal_and_nothing_on_stdout(
    tmp_path: Path,
) -> None:
    refused = run_inject(tmp_path, pod(ATTACKER))
    assert refused.returncode != 0
    assert refused.stdout == b""
    assert refused.stderr.decode() == f"sidecar-injector: error: {LOCK_MESSAGE}\n"
    same = run_inject(tmp_path, pod(XDS))
    assert (same.returncode, same.stderr) == (0, b"")
    assert b"mesh-proxy" in same.stdout


def test_inject_refuses_a_config_with_an_unknown_locked_setting(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("lockedSettings: [inject]\n")
    refused = subprocess.run(
        [CLI, "inject", "-f", "-", "--config", str(config)],
        input=orjson.dumps(pod()),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    assert refused.stdout == b""
    assert refused.stderr.decode().count("\n") == 1
    assert (
        "lockedSettings: Value error, entry 1 'inject' is not a setting" in refused.stderr.decode()
    )
