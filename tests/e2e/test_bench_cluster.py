"""``make bench``'s end-to-end section against a real control plane, with tiny counts.

Its figures mean nothing; that the section runs, measures every case and
states its goal is the point (the other sections: tests/process/test_bench_smoke.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import cluster
from tests.builders import REPO

pytestmark = pytest.mark.cluster


def _bench(out: Path, *args: str, timeout: float) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return (out / "BENCHMARKS.md").read_text()


def _section(text: str, heading: str) -> str:
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


# Starting a control plane and creating its pods takes minutes on a loaded machine.
@pytest.mark.timeout(900)
def test_the_end_to_end_section_runs_against_a_real_control_plane(tmp_path: Path) -> None:
    reason = cluster.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    text = _bench(tmp_path, "--only", "cluster", timeout=850)
    section = _section(text, "## Pod creation end to end")
    for case in (
        "plain pod, no webhook call",
        "injected pod created directly",
        "through the webhook",
    ):
        assert case in section, section
    assert "meshed:after / direct:after" in section
    goals = _section(text, "## Goals")
    assert "meshed pod creation vs creating the injected pod directly" in goals
