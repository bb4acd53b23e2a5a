"""``make bench``: run the engine and service benchmarks, write BENCHMARKS.md and plots.

``--quick`` shrinks every count and duration so the smoke test can check,
in seconds, that the whole pipeline (servers, wrk, report, plots) works;
its figures mean nothing. ``--engine-only`` skips the servers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import engine, report, service

FULL_ENGINE = {
    "env_sizes": (100, 250, 500, 1000, 1500, 2000, 2500, 3000),
    "container_sizes": (1, 2, 5, 10, 20, 30, 40, 50, 60),
    # Many short rounds: a burst of other work on the machine then lands on
    # a few samples of every case rather than on most samples of one.
    "rounds": 20,
    "per_round": 50,
    "warmup": 100,
}
QUICK_ENGINE = {
    "env_sizes": (100, 500, 1000),
    "container_sizes": (1, 5, 10),
    "rounds": 2,
    "per_round": 5,
    "warmup": 2,
}
FULL_SERVICE = service.Plan(seconds=10, warmup_seconds=2, rounds=5, soak_requests=100_000)
QUICK_SERVICE = service.Plan(seconds=1, warmup_seconds=0, rounds=1, soak_requests=300, churn_runs=2)


def main(argv: Sequence[str] | None = None) -> int:
    """Run, write the report, print where it went."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(), help="where BENCHMARKS.md goes")
    parser.add_argument("--quick", action="store_true", help="tiny counts (smoke test)")
    parser.add_argument("--engine-only", action="store_true", help="skip the HTTPS service")
    args = parser.parse_args(argv)
    if not args.engine_only:
        missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
        if missing:
            parser.error(f"needs {' and '.join(missing)} (apt-get install wrk util-linux)")

    started = time.monotonic()
    load_before = os.getloadavg()
    # Before anything is written: the run rewrites tracked files (report, plots).
    measured = report.commit()
    work = args.out / "bench" / "results"
    work.mkdir(parents=True, exist_ok=True)
    print("engine ...", flush=True)
    engine_results = engine.run(**(QUICK_ENGINE if args.quick else FULL_ENGINE))  # type: ignore[arg-type]
    engine.print_table(engine_results)
    service_results = None
    if not args.engine_only:
        print("\nservice ...", flush=True)
        service_results = service.run(work, QUICK_SERVICE if args.quick else FULL_SERVICE)
        (work / "service.json").write_text(json.dumps(service_results, indent=1))
    (work / "engine.json").write_text(json.dumps(engine_results, indent=1))
    command = "python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    path = report.write(
        args.out,
        engine=engine_results,
        service=service_results,
        elapsed_s=time.monotonic() - started,
        command=command.strip(),
        load=(load_before, os.getloadavg()),
        measured_commit=measured,
    )
    print(f"\nwrote {path} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
