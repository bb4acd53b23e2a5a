"""``make bench`` still works end to end, with tiny counts; its figures mean nothing.

The engine and service sections run for real (real HTTPS servers under wrk)
and the end-to-end section against a real control plane, each skipped with
the reason where this machine lacks what it needs (wrk and taskset; the
control plane's binaries). The node section is never started here: a real
node takes minutes and the machine's only kubelet; its wiring is checked with
stand-ins, down to the report saying why it was skipped. No figure is
asserted: timing asserts would make the suite flaky on a busy machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import bench.node
import harness.kube.binaries
import harness.kube.images
import harness.kube.node
from bench import cluster, run
from bench.report import SECTIONS
from tests.builders import REPO

ROOT = REPO


def _bench(out: Path, *args: str, timeout: float = 280) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return (out / "BENCHMARKS.md").read_text()


def _section(text: str, heading: str) -> str:
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> str:
    for tool, package in (("wrk", "wrk"), ("taskset", "util-linux")):
        if shutil.which(tool) is None:
            pytest.skip(f"the bench smoke test needs {tool} (apt-get install {package})")
    return _bench(tmp_path_factory.mktemp("bench"), "--only", "engine,service")


def test_the_report_has_every_section(report: str) -> None:
    missing = [heading for heading in SECTIONS if f"\n{heading}\n" not in report]
    assert not missing, report


def test_each_goal_measured_is_met_or_missed(report: str) -> None:
    table = _section(report, "## Goals")
    verdicts = [row.rsplit("|", 2)[1].strip() for row in table.splitlines() if row.startswith("| ")]
    # Header and separator, then the engine's two goals and the service's four.
    assert len(verdicts) == 2 + 6, table
    assert set(verdicts[2:]) <= {"**met**", "**missed**"}, table


def test_sections_not_selected_say_so(report: str) -> None:
    for heading in ("## Pod creation end to end", "## Pod start-up on a node"):
        assert "Skipped in this run: not selected (--only)." in _section(report, heading)


def _report_of_node_section(tmp_path: Path) -> str:
    assert run.main(["--quick", "--only", "node", "--out", str(tmp_path)]) == 0
    return _section((tmp_path / "BENCHMARKS.md").read_text(), "## Pod start-up on a node")


def test_the_node_section_is_skipped_with_the_reason_the_machine_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness.kube.node, "unsupported_reason", lambda: "a kubelet needs root")

    def never(_plan: Any) -> dict[str, Any]:
        raise AssertionError("the node section ran although the machine cannot run a node")

    monkeypatch.setattr(bench.node, "run", never)
    section = _report_of_node_section(tmp_path)
    assert (
        "Skipped in this run: this machine cannot run a Kubernetes node: a kubelet needs root."
        in section
    )


def test_the_node_section_is_skipped_when_the_node_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E.g. another node holds the machine: the section says so, the rest of the run goes on."""

    class BusyNode:
        def __init__(self, **_kwargs: Any) -> None:
            pass

        def start(self) -> None:
            raise harness.kube.node.NodeError("another node is running on this machine (pid 1)")

    monkeypatch.setattr(bench.node, "unavailable_reason", lambda: None)
    monkeypatch.setattr(harness.kube.node, "Node", BusyNode)
    for module, name in (
        (harness.kube.images, "build_images"),
        (harness.kube.binaries, "build_binaries"),
        (harness.kube.node, "build_node_binaries"),
    ):
        monkeypatch.setattr(module, name, lambda: {})
    section = _report_of_node_section(tmp_path)
    assert "Skipped in this run: another node is running on this machine (pid 1)." in section


def test_the_end_to_end_section_is_skipped_when_the_control_plane_cannot_be_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_build() -> Path:
        raise harness.kube.binaries.ControlPlaneError(
            "build_control_plane.sh failed with exit code 2"
        )

    monkeypatch.setattr(cluster, "unavailable_reason", lambda: None)
    monkeypatch.setattr(cluster, "build_binaries", no_build)
    assert run.main(["--quick", "--only", "cluster", "--out", str(tmp_path)]) == 0
    section = _section((tmp_path / "BENCHMARKS.md").read_text(), "## Pod creation end to end")
    assert "Skipped in this run: build_control_plane.sh failed with exit code 2." in section
