"""``make bench``: run the benchmark sections, write BENCHMARKS.md.

Sections: ``engine`` (in-process), ``service`` (HTTPS under wrk against two
baselines), ``cluster`` (pod creation end to end through kube-apiserver),
``node`` (pod start-up on a real one-node cluster). A section that cannot run
on this machine is skipped with its reason, which the report states; one that
fails is reported as failed and the command exits 1 after writing the report.

``--before REV`` serves the webhook of an older commit next to the current
one in the service and end-to-end sections, alternated, so the report shows
before and after from the same run. ``--quick`` shrinks every count and
duration so the smoke test can check the pipeline in seconds; its figures
mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import before as before_tree
from bench import cluster, engine, node, report, service
from bench.report import Outcome

SECTION_NAMES = ("engine", "service", "cluster", "node")
FULL: dict[str, Any] = {
    # Many short rounds: a burst of other work lands on a few samples of every
    # case rather than on most samples of one.
    "engine": {"rounds": 20, "per_round": 50, "warmup": 100},
    "service": service.Plan(seconds=10, warmup_seconds=2, rounds=5, soak_requests=100_000),
    "cluster": cluster.Plan(pods=300, clients=8, rounds=5),
    "node": node.Plan(replicas=200),
}
QUICK: dict[str, Any] = {
    "engine": {"rounds": 2, "per_round": 5, "warmup": 2},
    "service": service.Plan(seconds=1, warmup_seconds=0, rounds=1, soak_requests=300, churn_runs=2),
    "cluster": cluster.Plan(pods=10, clients=4, rounds=1, settle=False),
    "node": node.Plan(replicas=10),
}


def _service_skip() -> str | None:
    missing = [tool for tool in service.TOOLS if shutil.which(tool) is None]
    if missing:
        packages = " ".join(sorted({service.TOOLS[tool] for tool in missing}))
        return f"needs {' and '.join(missing)} (apt-get install {packages})"
    if (os.cpu_count() or 1) < 2:
        return "needs 2 cores (the server on one, wrk on the other)"
    return None


def _attempt(name: str, skip: str | None, work: Callable[[], dict[str, Any]]) -> Outcome:
    """Run one section: skipped with ``skip`` if given; failures kept for the report."""
    if skip is not None:
        print(f"{name}: skipped: {skip}", flush=True)
        return Outcome(skipped=skip)
    print(f"{name} ...", flush=True)
    try:
        return Outcome(data=work())
    except (cluster.ClusterUnavailable, node.NodeUnavailable) as err:
        reason = str(err).splitlines()[0]
        print(f"{name}: skipped: {reason}", flush=True)
        return Outcome(skipped=reason)
    except Exception as err:
        traceback.print_exc()
        return Outcome(
            failed=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run, write the report, print where it went."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(), help="where BENCHMARKS.md goes")
    parser.add_argument("--quick", action="store_true", help="tiny counts (smoke test)")
    parser.add_argument(
        "--only", default=",".join(SECTION_NAMES), help="comma-separated sections to run"
    )
    parser.add_argument("--before", metavar="REV", help="also measure the webhook at this commit")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTION_NAMES))
    if unknown:
        parser.error(f"unknown section {unknown[0]} (sections: {', '.join(SECTION_NAMES)})")
    plans = QUICK if args.quick else FULL

    started = time.monotonic()
    load_before = os.getloadavg()
    measured = report.commit()  # before anything is written: the run rewrites BENCHMARKS.md
    work = args.out / "bench" / "results"
    work.mkdir(parents=True, exist_ok=True)
    tree: before_tree.Tree | None = None
    if args.before and {"service", "cluster"} & set(chosen):
        print(f"preparing {args.before} ...", flush=True)
        tree = before_tree.prepare(args.before)

    def not_chosen(name: str) -> str | None:
        return None if name in chosen else "not selected (--only)"

    outcomes: dict[str, Outcome] = {}
    outcomes["engine"] = _attempt(
        "engine", not_chosen("engine"), lambda: engine.run(**plans["engine"])
    )
    if outcomes["engine"].data is not None:
        engine.print_table(outcomes["engine"].data)
    outcomes["service"] = _attempt(
        "service",
        not_chosen("service") or _service_skip(),
        lambda: service.run(
            work / "service", plans["service"], before_cli=tree.cli if tree else None
        ),
    )
    outcomes["cluster"] = _attempt(
        "cluster",
        not_chosen("cluster") or cluster.unavailable_reason(),
        lambda: cluster.run(
            work / "cluster",
            plans["cluster"],
            variants=cluster.variants_for(
                tree.cli if tree else None, tree.injector_config if tree else None
            ),
        ),
    )
    outcomes["node"] = _attempt(
        "node", not_chosen("node") or node.unavailable_reason(), lambda: node.run(plans["node"])
    )
    for name, outcome in outcomes.items():
        if outcome.data is not None:
            (work / f"{name}.json").write_text(json.dumps(outcome.data, indent=1, default=str))
    command = "python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    path = report.write(
        args.out,
        outcomes=outcomes,
        before=tree.rev if tree else None,
        elapsed_s=time.monotonic() - started,
        command=command.strip(),
        load=(load_before, os.getloadavg()),
        measured_commit=measured,
    )
    print(f"\nwrote {path} in {time.monotonic() - started:.0f} s")
    failed = [name for name, outcome in outcomes.items() if outcome.failed]
    if failed:
        print(f"failed sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
