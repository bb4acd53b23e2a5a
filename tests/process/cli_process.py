"""Run the real ``sidecar-injector`` command and learn how much memory it needed.

The child runs under an address-space limit, so an unbounded read fails the
test (a MemoryError, or the bound's own message missing) instead of taking
the machine with it; its peak resident size comes from the kernel's
accounting (``wait4``'s rusage), so a bounded read can be shown to stay small.
Output goes to files, so nothing blocks on a full pipe while the child runs.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.server import CLI

# Far above what any command needs (check with the Kubernetes client, about
# 100 MiB resident), far below what an unbounded read would take.
ADDRESS_SPACE_LIMIT = 1536 * 1024 * 1024
# What a bounded run may peak at: the reads are bounded well under this.
PEAK_RSS_LIMIT_KIB = 400 * 1024


@dataclass(frozen=True)
class Ran:
    """A finished run: exit status, what it wrote, its peak resident size in KiB."""

    code: int
    out: bytes
    err: bytes
    peak_kib: int

    @property
    def err_lines(self) -> list[str]:
        return self.err.decode(errors="replace").splitlines()


# The limit is set by a shell that then execs the command (same process, so
# wait4 still reports its peak): a ``preexec_fn`` is unsafe once the test
# process runs threads, as it does with a fake API server.
_LIMITED = f'ulimit -v {ADDRESS_SPACE_LIMIT // 1024} && exec "$0" "$@"'


def run_cli(
    *args: str,
    tmp_path: Path,
    stdin: Path | None = None,
    env: Mapping[str, str] | None = None,
    deadline: float = 120.0,
) -> Ran:
    """Run ``sidecar-injector ARGS``; fail the test if it has not ended within ``deadline`` s.

    ``stdin`` is a file to read standard input from (else /dev/null). The
    environment is the test's, without ``KUBECONFIG``, plus ``env``.
    """
    environment = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    environment.update(env or {})
    out_path, err_path = tmp_path / "cli.stdout", tmp_path / "cli.stderr"
    with (
        (stdin or Path(os.devnull)).open("rb") as given,
        out_path.open("wb") as out,
        err_path.open("wb") as err,
    ):
        proc = subprocess.Popen(
            ["sh", "-c", _LIMITED, CLI, *args], stdin=given, stdout=out, stderr=err, env=environment
        )
    give_up = time.monotonic() + deadline
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > give_up:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"sidecar-injector {' '.join(args)} did not end within {deadline}s"
            )
        time.sleep(0.02)  # polling the child, not waiting for an outcome
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Ran(proc.returncode, out_path.read_bytes(), err_path.read_bytes(), usage.ru_maxrss)
