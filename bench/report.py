"""BENCHMARKS.md, from the plain data the sections return.

Everything in the report is generated, so a rerun replaces it whole; the
hand-written part (what profiling found) lives in ``bench/findings.md`` and
is copied in. A section that did not run says why instead of showing figures.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

FINDINGS = Path(__file__).resolve().parent / "findings.md"
SECTIONS = (
    "## Goals",
    "## Engine",
    "## Service",
    "## 1,500-env-var pod through the service",
    "## Soak",
    "## Pod creation end to end",
    "## Pod start-up on a node",
    "## Profiling",
    "## Machine",
    "## How to reproduce",
)
# Soak memory counts as flat when the server grew by less than this: allocator
# noise is a few hundred KiB; a leak of even 50 bytes per request over 100,000
# requests would show as 5 MB.
FLAT_RSS_KIB = 4096
# "Under 6 KB", counted strictly.
POD_BYTES_GOAL = 6000


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a section produced: its data, or why it was skipped, or how it failed."""

    data: dict[str, Any] | None = None
    skipped: str | None = None
    failed: str | None = None

    def note(self) -> str:
        """The sentence a section shows instead of figures."""
        if self.skipped is not None:
            return f"Skipped in this run: {self.skipped}."
        if self.failed is not None:
            return f"Failed in this run: {self.failed}"
        return "Not run."


def machine() -> dict[str, str]:
    """What the figures depend on: cores, CPU, kernel, interpreter, server stack."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "nproc": str(os.cpu_count()),
        "CPU model (/proc/cpuinfo)": model,
        "kernel": platform.release(),
        "Python": platform.python_version(),
    }
    for dist in ("uvicorn", "fastapi", "starlette", "h11", "orjson", "uvloop", "httptools"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "not installed"
    try:
        info["wrk"] = subprocess.run(
            ["wrk", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        info["wrk"] = "not found"
    return info


def commit() -> str:
    """The commit measured, marked when the tree had local changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha} (with uncommitted changes)" if dirty else sha


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, fmt)


def _case(engine: Mapping[str, Any], label: str) -> Mapping[str, Any]:
    found: Mapping[str, Any] = next(r for r in engine["cases"] if r["label"] == label)
    return found


# --- goals ----------------------------------------------------------------------------

Goal = tuple[str, str, str, bool | None]


def goals(outcomes: Mapping[str, Outcome], before: str | None) -> list[Goal]:
    """(goal, target, measured, met) rows; ``None`` when not measured in this run."""
    rows: list[Goal] = []
    missing = "not measured in this run"
    engine = outcomes["engine"].data
    if engine is not None:
        typical = _case(engine, "typical (3 containers)")["median_us"]
        rows.append(
            ("engine, typical pod (median)", "<= 200 us", f"{typical:.0f} us", typical <= 200)
        )
        size = engine["pod_bytes"]["one_container_injected"]
        rows.append(
            (
                "injected one-container pod (compact JSON)",
                f"< {POD_BYTES_GOAL:,} bytes",
                f"{size:,} bytes",
                size < POD_BYTES_GOAL,
            )
        )
    service = outcomes["service"].data
    if service is not None:
        ratios = service["compare"]["ratios"]
        measured = f"{ratios['mutate:echo']:.2f} x"
        if "mutate-before:echo" in ratios:
            measured += f" (before, {before}: {ratios['mutate-before:echo']:.2f} x)"
        rows.append(
            (
                "/mutate throughput vs FastAPI echo",
                ">= 0.7 x",
                measured,
                ratios["mutate:echo"] >= 0.7,
            )
        )
        p99 = service["compare"]["medians"]["mutate"]["p99_us"] / 1000
        rows.append(("/mutate p99 at 8 connections", "<= 5 ms", f"{p99:.2f} ms", p99 <= 5))
        big = max(m["p99_us"] for m in service["big_pod"].values()) / 1000
        rows.append(
            (
                "1,500-env-var pod, p99 (worst of 1 and 8 connections)",
                "<= 20 ms",
                f"{big:.2f} ms",
                big <= 20,
            )
        )
        soak = service["soak"]
        clean = soak["run"]["non2xx"] == 0 and soak["run"]["errors"] == 0
        rows.append(
            (
                "memory flat under soak, zero non-2xx/errors",
                f"growth < {FLAT_RSS_KIB // 1024} MiB",
                f"{soak['growth_kib'] / 1024:+.1f} MiB over {soak['run']['requests']:,} requests, "
                f"{soak['run']['non2xx']} non-2xx, {soak['run']['errors']} errors",
                soak["growth_kib"] < FLAT_RSS_KIB and clean,
            )
        )
    cluster = outcomes["cluster"].data
    if cluster is not None:
        summary = cluster["summary"]
        ratio = summary["ratios"]["meshed:after / direct:after"]
        measured = f"{ratio:.2f} x"
        if "meshed:before / direct:before" in summary["ratios"]:
            measured += f" (before: {summary['ratios']['meshed:before / direct:before']:.2f} x)"
        rows.append(
            (
                "meshed pod creation vs creating the injected pod directly",
                ">= 0.9 x",
                measured,
                ratio >= 0.9,
            )
        )
        meshed = summary["cases"]["meshed:after"]
        p50 = meshed["webhook_p50_ms"]
        # The p50 is interpolated in the histogram's buckets; the mean is exact.
        measured = f"{_num(p50, '.2f')} ms (mean {_num(meshed['webhook_mean_ms'], '.2f')} ms)"
        if "meshed:before" in summary["cases"]:
            old = summary["cases"]["meshed:before"]
            measured += (
                f"; before: {_num(old['webhook_p50_ms'], '.2f')} ms"
                f" (mean {_num(old['webhook_mean_ms'], '.2f')} ms)"
            )
        rows.append(
            (
                "webhook call p50, as kube-apiserver measures it, under that load",
                "<= 3 ms",
                measured,
                p50 is not None and p50 <= 3,
            )
        )
    if not rows:
        rows.append(("(no section with a goal ran)", "", missing, None))
    return rows


# --- sections -----------------------------------------------------------------------------


def _engine(outcome: Outcome) -> list[str]:
    lines = ["## Engine", ""]
    engine = outcome.data
    if engine is None:
        return [*lines, outcome.note(), ""]
    method = engine["method"]
    lines += [
        "Cost per pod of what `/mutate` does after parsing: `inject()` (decide, resolve",
        "settings, build containers, patch) + `orjson.dumps(patch)` + base64; `+parse` adds",
        "`orjson.loads` of the AdmissionReview body, which grows with the pod.",
        f"`time.perf_counter_ns` per call; {method['warmup']} warm-up calls per case;"
        f" {method['rounds']} rounds x {method['per_round']} calls, cases alternated each round;",
        "garbage collector disabled while timing (collected between rounds).",
        "",
    ]
    rows = [
        [r["label"], r["n"], f"{r['median_us']:.1f}", f"{r['p10_us']:.1f}", f"{r['p90_us']:.1f}"]
        for r in engine["cases"]
    ]
    lines += _table(("pod", "calls", "median us", "p10 us", "p90 us"), rows)
    sizes = engine["pod_bytes"]
    lines += [
        "",
        "Size of the pod before and after injection, as compact JSON (the pod with the",
        "patch `/mutate` returns applied; what the apiserver then stores adds its defaults):",
        "",
    ]
    lines += _table(
        ("pod", "bytes", "injected, bytes"),
        [
            [
                "one container (`bench/workload.py`, `one_container_pod`)",
                f"{sizes['one_container']:,}",
                f"{sizes['one_container_injected']:,}",
            ],
            ["typical (3 containers)", f"{sizes['typical']:,}", f"{sizes['typical_injected']:,}"],
        ],
    )
    return [*lines, ""]


SERVICE_HEADER = (
    "server",
    "req/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "CPU us/request",
    "requests",
    "non-2xx / errors",
)


def _service_rows(
    medians: Mapping[str, Mapping[str, float]], names: Mapping[str, str]
) -> list[list[str]]:
    return [
        [
            label,
            f"{medians[key]['rps']:,.0f}",
            _ms(medians[key]["p50_us"]),
            _ms(medians[key]["p99_us"]),
            _ms(medians[key]["p999_us"]),
            f"{medians[key]['cpu_us_per_request']:.0f}",
            f"{medians[key]['requests']:,.0f}",
            f"{medians[key]['non2xx']:.0f} / {medians[key]['errors']:.0f}",
        ]
        for key, label in names.items()
        if key in medians
    ]


def _service(outcome: Outcome, before: str | None) -> list[str]:
    service = outcome.data
    if service is None:
        return [f"{heading}\n\n{outcome.note()}\n" for heading in SECTIONS[2:5]]
    plan, compare = service["plan"], service["compare"]
    ratios = compare["ratios"]
    names = {
        "mutate": "/mutate",
        "mutate-before": f"/mutate, before ({before})",
        "echo": "FastAPI echo",
        "raw": "raw ASGI",
    }
    lines = [
        "## Service",
        "",
        "`POST /mutate` over HTTPS with keep-alive: each server pinned to core 0",
        "(`taskset -c 0`), wrk to core 1 (`wrk -t1 -c8`, `bench/post.lua` posting the typical",
        f"pod's AdmissionReview, {service['body_bytes']['typical']:,} bytes). The baselines",
        "(`bench/baselines.py`) are served by the same uvicorn with the project's TLS context and",
        "certificate: `raw` is a bare ASGI app returning a constant review, `echo` is FastAPI",
        "reading the body, parsing it with orjson and echoing the uid.",
        f"{plan['rounds']} rounds of {plan['seconds']} s per server, alternated, each after a",
        f"{plan['warmup_seconds']} s warm-up that is not counted; medians of the rounds; latencies",
        "are wrk's per-request figures.",
        "",
        *_table(SERVICE_HEADER, _service_rows(compare["medians"], names)),
        "",
        "Throughput against the FastAPI echo (median of per-round ratios): "
        + ", ".join(f"{names[key.split(':')[0]]} {value:.2f}" for key, value in ratios.items())
        + ". The same from CPU time per request (the echo's over each server's, from"
        " `/proc/PID/stat`; unlike throughput it does not depend on how much of its core a"
        " server got, so it holds on a shared machine): "
        + ", ".join(
            f"{names[key.split(':')[0]]} {value:.2f}"
            for key, value in compare["cpu_ratios"].items()
        )
        + ".",
        "",
        "## 1,500-env-var pod through the service",
        "",
        f"The same `/mutate` server, body {service['body_bytes']['env1500']:,} bytes, 1 and"
        f" {plan['connections']} connections alternated, {plan['rounds']} rounds.",
        "",
        *_table(
            SERVICE_HEADER,
            _service_rows(
                service["big_pod"],
                {"c1": "1 connection", "c8": f"{plan['connections']} connections"},
            ),
        ),
        "",
    ]
    soak, churn = service["soak"], service["churn"]
    steps = ", ".join(f"{kib / 1024:.1f}" for kib in churn["rss_kib"])
    lines += [
        "## Soak",
        "",
        f"{soak['run']['requests']:,} `/mutate` requests (typical pod) on {plan['connections']}"
        " keep-alive connections held throughout (`post.lua` stops at the count; wrk idles to"
        f" the end of its `-d{soak['seconds']}s`). Non-2xx: {soak['run']['non2xx']}; socket"
        f" errors: {soak['run']['errors']}. Server RSS from the first sample (a second in) to"
        f" the end: {soak['growth_kib']:+,} KiB (flat: under {FLAT_RSS_KIB // 1024} MiB);"
        f" at the end {soak['rss_end_kib'] / 1024:.1f} MiB.",
        "",
        f"Connection churn: then {len(churn['rss_kib']) - 1} one-second wrk runs, each opening and"
        f" closing {plan['connections']} connections; server RSS (MiB) before and after each:"
        f" {steps}; {churn['per_connection_kib']:+,.0f} KiB per closed connection (see Profiling).",
        "",
    ]
    return lines


CLUSTER_CASES = {
    "plain": "plain pod, no webhook call",
    "direct": "injected pod created directly, no webhook call",
    "meshed": "plain pod through the webhook",
    "policy": "plain pod, policy mode (no webhook)",
    "direct-all": "every key set: injected pod created directly",
    "meshed-all": "every key set: plain pod through the webhook",
    "policy-all": "every key set: plain pod, policy mode",
}


def _cluster(outcome: Outcome, before: str | None) -> list[str]:
    lines = ["## Pod creation end to end", ""]
    cluster = outcome.data
    if cluster is None:
        return [*lines, outcome.note(), ""]
    plan, summary = cluster["plan"], cluster["summary"]
    lines += [
        "The e2e control plane (`harness/kube/control_plane.py`: real etcd and kube-apiserver),",
        "the install rendered from `manifests/` and applied, and `sidecar-injector serve` on this",
        "host with the install's config and a namespace watch, reached by the apiserver through",
        f"the install's Service. {plan['clients']} clients (one kept-alive TLS connection each)"
        f" create {plan['pods']} one-container pods per case; cases alternated in {plan['rounds']}"
        " rounds (a new order each round, after one unrecorded warm-up round), all pods",
        "deleted between cases and each burst started once kube-apiserver and etcd are idle",
        "again; medians of the rounds. Nothing is pinned: the webhook shares the cores",
        "with the apiserver and etcd, as in a small cluster. CPU from `/proc/PID/stat`",
        "(utime + stime, 10 ms ticks) around each burst; `client` is the load generator itself.",
        "The webhook latency is kube-apiserver's own",
        "`apiserver_admission_webhook_admission_duration_seconds` (the difference of its",
        "histogram across the burst): the mean is exact; the p50 is interpolated within the",
        "histogram's buckets, so inside its first bucket (5 ms in Kubernetes 1.37) it is only",
        "an estimate, while the share of calls in that bucket is exact.",
        "",
    ]
    rows = []
    for key, case in summary["cases"].items():
        name, _, variant = key.partition(":")
        label = CLUSTER_CASES[name] + (f" ({before})" if variant == "before" else "")
        cpu = case["cpu_ms_per_pod"]
        calls = case.get("webhook_calls_per_pod")
        rows.append(
            [
                label,
                f"{case['pods_per_s']:.0f}",
                f"{case['create_p50_ms']:.1f}",
                f"{case['stored_bytes']:,.0f}",
                *(
                    _num(cpu.get(p), ".2f") if p in cpu else ""
                    for p in ("kube-apiserver", "etcd", "webhook", "client")
                ),
                _num(calls, ".1f") if calls else "",
                _num(case["webhook_mean_ms"], ".2f") if case["webhook_mean_ms"] else "",
                _num(case["webhook_p50_ms"], ".2f") if case["webhook_p50_ms"] else "",
                f"{case['webhook_in_first']:.0%} < {case['webhook_first_ms']:g} ms"
                if case["webhook_in_first"] is not None
                else "",
            ]
        )
    lines += _table(
        (
            "case",
            "pods/s",
            "create p50 ms",
            "stored bytes (protobuf)",
            "CPU ms/pod: apiserver",
            "etcd",
            "webhook",
            "client",
            "webhook calls/pod",
            "webhook mean ms",
            "webhook p50 ms",
            "calls in the first bucket",
        ),
        rows,
    )
    lines += ["", "Throughput ratios (median of per-round ratios):", ""]
    lines += _table(("ratio", "value"), [[k, f"{v:.2f}"] for k, v in summary["ratios"].items()])
    if summary.get("cpu_ratios"):
        lines += [
            "",
            "The cluster's CPU per pod (kube-apiserver + etcd + webhook), ratios (median of",
            "per-round ratios; docs/policy.md reads them):",
            "",
        ]
        lines += _table(
            ("ratio", "value"), [[k, f"{v:.2f}"] for k, v in summary["cpu_ratios"].items()]
        )
    return [*lines, ""]


def _node(outcome: Outcome) -> list[str]:
    lines = ["## Pod start-up on a node", ""]
    node = outcome.data
    if node is None:
        return [*lines, outcome.note(), ""]
    unmeshed, meshed = node["unmeshed"], node["meshed"]
    lines += [
        "A real one-node cluster (`harness/kube/node.py`: containerd, kubelet, scheduler,",
        "kube-proxy, the install running from its own images), `harness/kube/node_bench.py`: a",
        f"ReplicaSet of {unmeshed['replicas']} busybox pods in an unmeshed namespace, then in a",
        "meshed one (proxy and init requests lowered so that they fit on 2 CPUs, see",
        "docs/e2e.md); seconds from `kubectl apply` to all Pod objects existing, and to all Ready.",
        "",
    ]
    lines += _table(
        ("what", "unmeshed s", "meshed s", "meshed / unmeshed"),
        [
            [
                "all Pod objects exist",
                unmeshed["created_s"],
                meshed["created_s"],
                node["ratio_created"],
            ],
            ["all pods Ready", unmeshed["ready_s"], meshed["ready_s"], node["ratio_ready"]],
        ],
    )
    lines += ["", f"Pods stored with the proxy: {meshed['injected']} of {meshed['replicas']}."]
    if node.get("host_not_restored"):
        lines += ["", "Teardown left host state behind: " + "; ".join(node["host_not_restored"])]
    return [*lines, ""]


def write(
    out: Path,
    *,
    outcomes: Mapping[str, Outcome],
    before: str | None,
    elapsed_s: float,
    command: str,
    load: tuple[tuple[float, ...], tuple[float, ...]],
    measured_commit: str,
) -> Path:
    """Write ``out/BENCHMARKS.md``; return its path."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    compared = f' against {before} ("before")' if before else ""
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` on {now}, commit {measured_commit}{compared},"
        f" in {elapsed_s / 60:.1f} minutes.",
        "Every figure below comes from that one run; rerun to replace it (see the end).",
        "",
        "## Goals",
        "",
    ]
    verdict = {True: "**met**", False: "**missed**", None: "not measured"}
    lines += _table(
        ("goal", "target", "measured", "met?"),
        [(g, t, m, verdict[ok]) for g, t, m, ok in goals(outcomes, before)],
    )
    lines += ["", *_engine(outcomes["engine"]), *_service(outcomes["service"], before)]
    lines += [*_cluster(outcomes["cluster"], before), *_node(outcomes["node"])]
    findings = FINDINGS.read_text().strip() if FINDINGS.exists() else "Nothing recorded."
    lines += ["## Profiling", "", findings, "", "## Machine", ""]
    facts = machine()
    facts["load average (1, 5, 15 min) at start / end"] = " / ".join(
        ", ".join(f"{x:.2f}" for x in avg) for avg in load
    )
    lines += _table(("what", "value"), sorted(facts.items()))
    lines += [
        "",
        "A load average well above what the benchmark itself keeps runnable (about 1.5 for",
        "the service sections, 2 for the end-to-end one) means other processes took CPU during",
        "the run, which widens the tails far more than the medians.",
        "",
        "## How to reproduce",
        "",
        "```sh",
        "apt-get install wrk util-linux    # wrk: load generator; taskset: pinning",
        "make bench    # = .venv/bin/python -m bench.run --out . --before 6ae0950",
        "```",
        "",
        "Needs 2 cores and a quiet machine; the end-to-end section needs the e2e control plane",
        "(`make control-plane`, cached), the node section root and the node's parts (docs/e2e.md);",
        "each is skipped with its reason otherwise. `--before REV` adds the webhook at that commit",
        "to the service and end-to-end sections (installed in a virtualenv of its own, kept in",
        "`~/.cache/sidecar-injector/bench-before/`); `--only engine,service` runs some sections;",
        "`--quick` is the seconds-long version the smoke test runs (its numbers mean nothing).",
        "Raw figures and logs go to `bench/results/` (git-ignored).",
        "",
    ]
    path = out / "BENCHMARKS.md"
    path.write_text("\n".join(lines))
    return path
