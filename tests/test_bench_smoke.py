"""``make bench`` still works end to end: engine, real HTTPS servers, wrk, report, plots.

Runs the benchmark with tiny counts and durations into a temporary directory
and checks that the report has every section and both plots exist. The
figures of such a run mean nothing, so none are asserted: timing asserts
would make the suite flaky on a busy machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import SECTIONS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool, package in (("wrk", "wrk"), ("taskset", "util-linux")):
        assert shutil.which(tool), f"the bench smoke test needs {tool} (apt-get install {package})"
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_the_report_has_every_section(report_dir: Path) -> None:
    text = (report_dir / "BENCHMARKS.md").read_text()
    missing = [heading for heading in SECTIONS if f"\n{heading}\n" not in text]
    assert not missing, text


def test_the_report_states_each_goal_as_met_or_missed(report_dir: Path) -> None:
    text = (report_dir / "BENCHMARKS.md").read_text()
    table = text.split("\n## Goals\n", 1)[1].split("\n## ", 1)[0]
    verdicts = [row.rsplit("|", 2)[1].strip() for row in table.splitlines() if row.startswith("| ")]
    # Header and separator rows first, then one row per goal of the issue.
    assert len(verdicts) == 8, table
    assert set(verdicts[2:]) <= {"**met**", "**missed**"}, table


def test_both_plots_are_written(report_dir: Path) -> None:
    for name in ("latency_vs_size.png", "throughput.png"):
        assert (report_dir / "bench" / name).read_bytes().startswith(b"\x89PNG")
