"""Hostile manifests given to the offline ``inject`` command: a real process, its peak memory.

YAML aliases are refused by the CLI as by ``/preview``: the alias bomb below
is under 600 bytes and stands for 387 million strings. Before the refusal it
drove ``inject`` to gigabytes and a segfault. The child runs under an
address-space limit, so a regression fails the test instead of the machine.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).parent / "sidecar-injector")
ENABLE = ["--label", "sidecar-injection=enabled"]
# Far above what inject needs (docs/testing.md), far below what the bomb would take.
ADDRESS_SPACE_LIMIT = 1536 * 1024 * 1024
PEAK_RSS_LIMIT_KIB = 200 * 1024


def alias_bomb(levels: int = 9) -> str:
    """Nine levels of nine aliases each: 9**9 strings when walked as a tree."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return (
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bomb\nx:\n"
        + "".join(f"  {line}\n" for line in lines)
        + "spec:\n  containers:\n  - name: app\n    image: nginx\n"
        + f"    args: *l{levels - 1}\n"
    )


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def run_measured(*args: str, stdin: bytes, tmp_path: Path) -> tuple[int, bytes, bytes, int]:
    """Run the CLI; (exit status, stdout, stderr, peak RSS in KiB) from the kernel's accounting.

    Output goes to files and the child is reaped with ``wait4``, whose rusage
    is the child's own peak RSS (``communicate`` would reap it without one).
    """
    (tmp_path / "stdin").write_bytes(stdin)
    with (
        (tmp_path / "stdin").open("rb") as given,
        (tmp_path / "stdout").open("wb") as out,
        (tmp_path / "stderr").open("wb") as err,
    ):
        proc = subprocess.Popen(
            [CLI, *args],
            stdin=given,
            stdout=out,
            stderr=err,
            preexec_fn=_limit_address_space,  # noqa: PLW1509 - the test process starts no threads
        )
    deadline = time.monotonic() + 60
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("inject did not finish within 60 s")
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (
        proc.returncode,
        (tmp_path / "stdout").read_bytes(),
        (tmp_path / "stderr").read_bytes(),
        usage.ru_maxrss,
    )


def test_a_600_byte_alias_bomb_is_refused_with_one_line_and_little_memory(tmp_path: Path) -> None:
    bomb = alias_bomb().encode()
    assert len(bomb) < 600
    code, out, err, peak_kib = run_measured(
        "inject", "-f", "-", *ENABLE, stdin=bomb, tmp_path=tmp_path
    )
    assert code == 1, err[-500:]
    assert out == b""
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sidecar-injector: error: <stdin>: line 6 column 7:")
    assert "YAML anchors and aliases are not accepted" in lines[0]
    assert peak_kib < PEAK_RSS_LIMIT_KIB


def test_an_anchor_without_any_alias_is_refused_too(tmp_path: Path) -> None:
    text = b"apiVersion: v1\nkind: Pod\nmetadata: &m {name: web}\nspec: {containers: []}\n"
    code, out, err, _ = run_measured("inject", "-f", "-", *ENABLE, stdin=text, tmp_path=tmp_path)
    assert (code, out) == (1, b"")
    assert b"line 3 column 11: YAML anchors and aliases are not accepted" in err
