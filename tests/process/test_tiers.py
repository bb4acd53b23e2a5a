"""The tiers as a test session sees them: markers from the folder, and the unit tier's guard.

Each case runs a pytest session of its own, in a process of its own, over
test files laid out as the repository's (``tests/unit``, ``tests/process``),
with the tiers plugin the repository's ``tests/conftest.py`` loads.
"""

from __future__ import annotations

import pytest

from tests.builders import REPO

SPAWNS = """
import subprocess

def test_spawns():
    subprocess.run(["true"], check=True)
"""


@pytest.fixture
def session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    (pytester.path / "tests" / "unit").mkdir(parents=True)
    (pytester.path / "tests" / "process").mkdir(parents=True)
    return pytester


def run(session: pytest.Pytester, *args: str) -> pytest.RunResult:
    return session.runpytest_subprocess(
        "-p", "tests.tiers", "-p", "no:cacheprovider", "--rootdir", str(session.path), *args
    )


def write(session: pytest.Pytester, path: str, source: str) -> None:
    (session.path / path).write_text(source)


def test_a_unit_test_that_starts_a_process_fails_and_says_where_it_belongs(
    session: pytest.Pytester,
) -> None:
    write(session, "tests/unit/test_spawning.py", SPAWNS)
    result = run(session)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*UnitTierViolation*subprocess.Popen*move it to tests/process/*"])


def test_a_process_it_starts_fails_the_unit_test_even_when_the_error_is_swallowed(
    session: pytest.Pytester,
) -> None:
    write(
        session,
        "tests/unit/test_swallowing.py",
        """
import subprocess

def test_swallows():
    try:
        subprocess.run(["true"], check=True)
    except Exception:
        pass
""",
    )
    result = run(session)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*subprocess.Popen*a unit test runs in-process only*"])


def test_a_unit_test_reaching_beyond_the_loopback_fails(session: pytest.Pytester) -> None:
    write(
        session,
        "tests/unit/test_network.py",
        """
import socket

def test_connects_out():
    with socket.socket() as sock:
        sock.settimeout(1)
        sock.connect(("192.0.2.1", 80))
""",
    )
    result = run(session)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*a connection to ('192.0.2.1', 80)*"])


def test_a_unit_test_may_talk_to_a_server_in_its_own_process_over_the_loopback(
    session: pytest.Pytester,
) -> None:
    write(
        session,
        "tests/unit/test_loopback.py",
        """
import http.server
import threading
import urllib.request

def test_in_process_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/", timeout=10)
    except urllib.error.HTTPError as answer:
        assert answer.code == 501
    finally:
        server.shutdown()
""",
    )
    run(session).assert_outcomes(passed=1)


def test_a_process_tier_test_may_start_processes(session: pytest.Pytester) -> None:
    write(session, "tests/process/test_spawning.py", SPAWNS)
    run(session).assert_outcomes(passed=1)


def test_each_test_is_marked_with_its_folders_tier_and_the_unit_tier_runs_first(
    session: pytest.Pytester,
) -> None:
    write(session, "tests/process/test_a.py", "def test_process():\n    pass\n")
    write(session, "tests/unit/test_b.py", "def test_unit():\n    pass\n")
    unit = run(session, "-m", "unit", "-v")
    unit.assert_outcomes(passed=1, deselected=1)
    unit.stdout.fnmatch_lines(["*tests/unit/test_b.py::test_unit PASSED*"])
    both = run(session, "-v")
    both.stdout.fnmatch_lines(["*test_b.py::test_unit PASSED*", "*test_a.py::test_process PASSED*"])


PACKAGE_FIXTURE = """
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="package")
def install():
    with (Path(__file__).parent / "setups.log").open("a") as log:
        log.write(os.environ.get("PYTEST_XDIST_WORKER", "none") + "\\n")
"""


def test_a_folder_under_e2e_is_one_unit_of_work_so_its_package_fixtures_start_once(
    session: pytest.Pytester,
) -> None:
    folder = session.path / "tests" / "e2e" / "cluster"
    folder.mkdir(parents=True)
    write(session, "tests/e2e/__init__.py", "")
    write(session, "tests/e2e/cluster/__init__.py", "")
    write(session, "tests/e2e/cluster/conftest.py", PACKAGE_FIXTURE)
    for index in range(4):
        write(
            session,
            f"tests/e2e/cluster/test_part{index}.py",
            "def test_uses(install):\n    pass\n",
        )
    run(session, "-n", "2", "--dist", "loadfile").assert_outcomes(passed=4)
    setups = (folder / "setups.log").read_text().split()
    assert len(setups) == 1, setups  # a unit per file: both workers would set it up
