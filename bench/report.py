"""BENCHMARKS.md and its two plots, from the plain data ``engine`` and ``service`` return.

Everything in the report is generated, so a rerun replaces it whole; the
hand-written part (what profiling found) lives in ``bench/findings.md`` and
is copied in.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI
import matplotlib.pyplot as plt

FINDINGS = Path(__file__).resolve().parent / "findings.md"
SECTIONS = (
    "## Goals",
    "## Engine",
    "## Service",
    "## 1,500-env-var pod through the service",
    "## One worker vs two",
    "## Soak",
    "## Profiling",
    "## Machine",
    "## How to reproduce",
)

# Soak memory counts as flat when the server grew by less than this after
# warm-up: allocator noise is a few hundred KiB; a per-request leak of even
# 50 bytes over 100,000 requests would show as 5 MB.
FLAT_RSS_KIB = 4096


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
    for dist in ("uvicorn", "fastapi", "starlette", "h11", "orjson"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "not installed"
    for extra in ("uvloop", "httptools"):
        try:
            info[extra] = metadata.version(extra)
        except metadata.PackageNotFoundError:
            info[extra] = "not installed (uvicorn uses asyncio + h11)"
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


def _case(engine: dict[str, Any], label: str) -> dict[str, Any]:
    return next(row for row in engine["cases"] if row["label"] == label)


def goals(
    engine: dict[str, Any], service: dict[str, Any] | None
) -> list[tuple[str, str, str, bool | None]]:
    """(goal, target, measured, met) rows; ``None`` when not measured in this run."""
    rows: list[tuple[str, str, str, bool | None]] = []
    typical = _case(engine, "typical (3 containers)")["median_us"]
    big = _case(engine, "1,500 env vars")["median_us"]
    rows.append(("engine, typical pod (median)", "<= 200 us", f"{typical:.0f} us", typical <= 200))
    rows.append(("engine, 1,500 env vars (median)", "<= 2 ms", f"{big / 1000:.2f} ms", big <= 2000))
    if service is None:
        for goal in (
            "/mutate throughput vs FastAPI echo",
            "/mutate p99 at 8 connections, 1 worker",
            "1,500-env-var pod through the service (p99, 8 connections)",
            "memory flat under soak",
        ):
            rows.append((goal, "", "not measured (engine only)", None))
        return rows
    ratio = service["compare"]["ratios"]["mutate:echo"]
    rows.append(("/mutate throughput vs FastAPI echo", ">= 0.7 x", f"{ratio:.2f} x", ratio >= 0.7))
    p99 = service["compare"]["medians"]["mutate"]["p99_us"] / 1000
    rows.append(("/mutate p99 at 8 connections, 1 worker", "<= 5 ms", f"{p99:.2f} ms", p99 <= 5))
    big_p99 = max(m["p99_us"] for m in service["big_pod"]["medians"].values()) / 1000
    rows.append(
        (
            "1,500-env-var pod through the service (p99, worst of 1 and 8 connections)",
            "<= 20 ms",
            f"{big_p99:.2f} ms",
            big_p99 <= 20,
        )
    )
    soak = service["soak"]
    growth = soak_growth_kib(soak)
    clean = soak["run"]["non2xx"] == 0 and soak["run"]["errors"] == 0
    rows.append(
        (
            "memory flat under soak (and zero non-2xx/errors)",
            f"growth < {FLAT_RSS_KIB // 1024} MiB",
            f"{growth / 1024:+.1f} MiB over {soak['run']['requests']:,} requests, "
            f"{soak['run']['non2xx']} non-2xx, {soak['run']['errors']} socket errors",
            growth < FLAT_RSS_KIB and clean,
        )
    )
    return rows


def soak_growth_kib(soak: dict[str, Any]) -> int:
    """RSS growth that follows requests: from the first sample inside the soak to its end.

    The first sample is taken a second in, once wrk's connections are open, so
    memory that follows connections (the warm-up's closed ones, see the churn
    section) is not charged to the 100,000 requests.
    """
    start = (
        soak["rss_samples"][0][1] if soak["rss_samples"] else sum(soak["rss_before_kib"].values())
    )
    return int(sum(soak["rss_after_kib"].values()) - start)


def plot_latency(engine: dict[str, Any], path: Path) -> None:
    """Median engine cost against pod size, both sweeps, with the fitted lines."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (axis, title) in zip(
        axes,
        (("env_vars", "env vars in the first container"), ("containers", "containers")),
        strict=True,
    ):
        sweep = engine["sweeps"][axis]
        for parse, key, name, color in (
            (False, "fit", "engine", "C0"),
            (True, "fit_parse", "parse + engine", "C2"),
        ):
            rows = [r for r in sweep["points"] if r["label"].endswith("+parse") is parse]
            sizes = [r["size"] for r in rows]
            med = [r["median_us"] for r in rows]
            err = [
                [r["median_us"] - r["p10_us"] for r in rows],
                [r["p90_us"] - r["median_us"] for r in rows],
            ]
            ax.errorbar(
                sizes,
                med,
                yerr=err,
                fmt="o",
                color=color,
                capsize=3,
                label=f"{name} (median, p10-p90)",
            )
            fit = sweep[key]
            xs = [min(sizes), max(sizes)]
            ax.plot(
                xs,
                [fit["intercept_us"] + fit["slope_us"] * x for x in xs],
                "--",
                color=color,
                label=f"fit: {fit['slope_us'] * 1000:.0f} ns/unit, R² {fit['r2']:.3f}",
            )
        ax.set_xlabel(title)
        ax.set_ylabel("microseconds per pod")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Engine cost per pod (decide + build + patch + orjson + base64)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_throughput(service: dict[str, Any], path: Path) -> None:
    """Requests/s per server (median bar, every round as a dot) and p50/p99."""
    series: list[tuple[str, list[dict[str, Any]]]] = [
        (name, service["compare"]["runs"][key])
        for name, key in (
            ("raw ASGI", "raw"),
            ("raw, /mutate-sized\nresponse", "raw-sized"),
            ("FastAPI echo", "echo"),
            ("/mutate", "mutate"),
        )
    ]
    workers = service.get("workers", {})
    if workers.get("supported"):
        series.append(("/mutate 2 workers", workers["runs"]["mutate-2-workers"]))
    names = [name for name, _ in series]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, (_, runs) in enumerate(series):
        rps = sorted(run["rps"] for run in runs)
        left.bar(index, rps[len(rps) // 2], color="C0", alpha=0.6)
        left.plot([index] * len(rps), rps, "k.", markersize=5)
    left.set_xticks(range(len(names)), names, fontsize=8)
    left.set_ylabel("requests/s (HTTPS keep-alive, 8 connections)")
    left.set_title("Throughput: bar = median, dots = rounds")
    left.grid(axis="y", alpha=0.3)
    width = 0.38
    for offset, key, label in ((-width / 2, "p50_us", "p50"), (width / 2, "p99_us", "p99")):
        values = [sorted(r[key] for r in runs)[len(runs) // 2] / 1000 for _, runs in series]
        right.bar([i + offset for i in range(len(series))], values, width, label=label)
    right.set_xticks(range(len(names)), names, fontsize=8)
    right.set_ylabel("latency, ms (median of rounds)")
    right.set_title("Latency at 8 connections")
    right.legend()
    right.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _shape(fit: dict[str, float], span: float, unit: str) -> str:
    """Say in words what the engine's line means; R² alone misleads when nothing grows."""
    growth = fit["slope_us"] * span
    share = growth / fit["intercept_us"] if fit["intercept_us"] > 0 else 0.0
    if abs(share) < 0.05 or fit["r2"] < 0.8:
        return (
            f"The engine's own cost barely depends on the {unit} count: the line adds"
            f" {growth:+.1f} us across the whole sweep ({share:+.0%} of the fixed cost), too"
            f" little to stand out from the noise (R² {fit['r2']:.2f}). What grows is the"
            " parse of the review, and it grows linearly."
        )
    return (
        f"The engine grows linearly (R² {fit['r2']:.3f}): {growth:+.0f} us across the sweep,"
        f" {share:+.0%} on top of the fixed cost."
    )


def _fmt_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return [_fmt_row(header), _fmt_row(["---"] * len(header)), *(_fmt_row(r) for r in rows)]


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def _service_rows(medians: dict[str, dict[str, float]], names: dict[str, str]) -> list[list[str]]:
    return [
        [
            label,
            f"{medians[key]['rps']:,.0f}",
            _ms(medians[key]["p50_us"]),
            _ms(medians[key]["p99_us"]),
            _ms(medians[key]["p999_us"]),
            f"{medians[key]['requests']:,.0f}",
            f"{medians[key]['non2xx']:.0f} / {medians[key]['errors']:.0f}",
        ]
        for key, label in names.items()
    ]


SERVICE_HEADER = (
    "server",
    "req/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "requests (all rounds)",
    "non-2xx / socket errors",
)


def write(
    out: Path,
    *,
    engine: dict[str, Any],
    service: dict[str, Any] | None,
    elapsed_s: float,
    command: str,
    load: tuple[tuple[float, ...], tuple[float, ...]],
    measured_commit: str,
) -> Path:
    """Write ``out/BENCHMARKS.md`` and ``out/bench/*.png``; return the report's path."""
    (out / "bench").mkdir(parents=True, exist_ok=True)
    plot_latency(engine, out / "bench" / "latency_vs_size.png")
    if service is not None:
        plot_throughput(service, out / "bench" / "throughput.png")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` on {now}, commit {measured_commit},"
        f" in {elapsed_s / 60:.1f} minutes.",
        "Every figure below comes from that one run; rerun to replace it (see the end).",
        "",
        "## Goals",
        "",
    ]
    verdict = {True: "**met**", False: "**missed**", None: "not measured"}
    lines += _table(
        ("goal", "target", "measured", "met?"),
        [(g, t, m, verdict[ok]) for g, t, m, ok in goals(engine, service)],
    )

    method = engine["method"]
    lines += [
        "",
        "## Engine",
        "",
        "Cost per pod of what `/mutate` does after parsing: `inject()` (decide, resolve",
        "settings, build containers, patch, patched object) + `orjson.dumps(patch)` + base64.",
        "`+parse` adds `orjson.loads` of the AdmissionReview body, which grows with the pod.",
        f"`time.perf_counter_ns` per call; {method['warmup']} warm-up calls per case; "
        f"{method['rounds']} rounds x {method['per_round']} calls, cases alternated each round;",
        "garbage collector disabled while timing (collected between rounds). One core, no load.",
        "",
    ]
    rows = [
        [r["label"], r["n"], f"{r['median_us']:.1f}", f"{r['p10_us']:.1f}", f"{r['p90_us']:.1f}"]
        for r in engine["cases"]
    ]
    lines += _table(("pod", "calls", "median us", "p10 us", "p90 us"), rows)
    lines += ["", "### Growth with pod size", ""]
    for axis, unit in (("env_vars", "env var"), ("containers", "container")):
        sweep = engine["sweeps"][axis]
        engine_rows = [r for r in sweep["points"] if not r["label"].endswith("+parse")]
        parse_rows = [r for r in sweep["points"] if r["label"].endswith("+parse")]
        lines += _table(
            (axis.replace("_", " "), "engine median us", "parse + engine median us"),
            [
                [a["size"], f"{a['median_us']:.1f}", f"{b['median_us']:.1f}"]
                for a, b in zip(engine_rows, parse_rows, strict=True)
            ],
        )
        fit, fit_parse = sweep["fit"], sweep["fit_parse"]
        span = max(r["size"] for r in engine_rows) - min(r["size"] for r in engine_rows)
        lines += [
            "",
            f"Least-squares line per {unit}: engine {fit['slope_us'] * 1000:.1f} ns "
            f"(intercept {fit['intercept_us']:.0f} us, R² {fit['r2']:.4f}); parse + engine "
            f"{fit_parse['slope_us'] * 1000:.1f} ns (intercept {fit_parse['intercept_us']:.0f} us,"
            f" R² {fit_parse['r2']:.4f}). {_shape(fit, span, unit)}",
            "",
        ]
    lines += ["![engine latency against pod size](bench/latency_vs_size.png)", ""]

    lines += _service_sections(service)
    lines += ["## Profiling", ""]
    lines += [FINDINGS.read_text().strip() if FINDINGS.exists() else "Nothing recorded.", ""]
    lines += ["## Machine", ""]
    facts = machine()
    facts["load average (1, 5, 15 min) at start / end"] = " / ".join(
        ", ".join(f"{x:.2f}" for x in avg) for avg in load
    )
    lines += _table(("what", "value"), sorted(facts.items()))
    lines += [
        "",
        "The machine is shared with other work (builds, test suites). The benchmark itself",
        "keeps about 1.5 runnable (server and wrk); a load average well above that at start",
        "or end means other processes took CPU during the run, which widens the tails (p99)",
        "far more than the medians.",
    ]
    lines += [
        "",
        "## How to reproduce",
        "",
        "```sh",
        "apt-get install wrk util-linux   # wrk: load generator; taskset: pinning",
        "make bench                       # = .venv/bin/python -m bench.run --out .",
        "```",
        "",
        "Needs 2 cores (server on core 0, wrk on core 1) and a quiet machine. It rewrites",
        "`BENCHMARKS.md`, `bench/latency_vs_size.png` and `bench/throughput.png`; raw",
        "figures, server logs and the throwaway certificates go to `bench/results/`",
        "(git-ignored). `python -m bench.run --quick --out DIR` is the seconds-long",
        "version the smoke test runs (its numbers mean nothing).",
        "",
    ]
    path = out / "BENCHMARKS.md"
    path.write_text("\n".join(lines))
    return path


def _service_sections(service: dict[str, Any] | None) -> list[str]:
    if service is None:
        return [
            heading + "\n\nNot measured in this run (engine only).\n" for heading in SECTIONS[2:6]
        ]
    plan = service["plan"]
    compare = service["compare"]
    ratios = compare["ratios"]
    lines = [
        "## Service",
        "",
        "`POST /mutate` over HTTPS with keep-alive: the server pinned to core 0",
        "(`taskset -c 0`), wrk pinned to core 1 (`taskset -c 1 wrk -t1 -c8`, `bench/post.lua`",
        f"posting the typical pod's AdmissionReview, {service['body_bytes']['typical']:,} bytes).",
        "Baselines (`bench/baselines.py`) are served by the same uvicorn with the project's",
        "TLS context (`webhook.tls`) and the same certificate: `raw` is a bare ASGI app",
        "returning a constant AdmissionReview, `echo` is FastAPI reading the body, parsing",
        "it with orjson and echoing the uid. "
        f"{plan['rounds']} rounds of {plan['seconds']} s per server, alternated",
        "(mutate, echo, raw, raw sized, mutate, ...), each after a"
        f" {plan['warmup_seconds']} s warm-up",
        "that is not counted; medians of the rounds. Latencies are wrk's per-request",
        "figures (exact percentiles from `done()`).",
        "",
    ]
    lines += _table(
        SERVICE_HEADER,
        _service_rows(
            compare["medians"],
            {
                "mutate": "/mutate",
                "echo": "FastAPI echo",
                "raw": "raw ASGI",
                "raw-sized": f"raw ASGI, {service['response_bytes']:,}-byte response",
            },
        ),
    )
    lines += [
        "",
        f"Throughput ratios (median of per-round ratios): /mutate : FastAPI echo = "
        f"{ratios['mutate:echo']:.2f}, FastAPI echo : raw = {ratios['echo:raw']:.2f}, "
        f"/mutate : raw = {ratios['mutate:raw']:.2f}. The fourth server is the raw app sending"
        f" a response as large as /mutate's ({service['response_bytes']:,} bytes, mostly the"
        " inline Envoy bootstrap in the base64 patch): raw sized : raw ="
        f" {ratios['raw-sized:raw']:.2f}, the share of the gap that is only bytes on the wire.",
        "",
        "![throughput against the baselines](bench/throughput.png)",
        "",
        "## 1,500-env-var pod through the service",
        "",
        f"The same `/mutate` server, body {service['body_bytes']['env1500']:,} bytes, "
        f"1 and {plan['connections']} connections alternated, {plan['rounds']} rounds.",
        "",
    ]
    big = service["big_pod"]["medians"]
    lines += _table(
        SERVICE_HEADER,
        _service_rows(big, {"c1": "1 connection", "c8": f"{plan['connections']} connections"}),
    )
    lines += ["", "## One worker vs two", ""]
    workers = service["workers"]
    if not workers.get("supported"):
        lines += [f"`serve --workers 2` could not be measured: {workers.get('error')}", ""]
    else:
        lines += [
            "Same load (wrk on core 1, 8 connections), alternated with the one-worker server.",
            "The two-worker server is allowed both cores (`taskset -c 0,1`), so its second",
            "worker **competes with wrk for core 1**: on this 2-core machine this measures",
            "what a second worker buys when the load generator eats a core, not what it",
            "would on a dedicated machine.",
            "",
        ]
        lines += _table(
            SERVICE_HEADER,
            _service_rows(
                workers["medians"],
                {"mutate": "1 worker (core 0)", "mutate-2-workers": "2 workers (cores 0,1)"},
            ),
        )
        ratio = workers["ratios"]["mutate-2-workers:mutate"]
        lines += ["", f"Two workers : one worker = {ratio:.2f} (median of per-round ratios).", ""]
    soak = service["soak"]
    run = soak["run"]
    before, after = soak["rss_before_kib"], soak["rss_after_kib"]
    samples = [kib for _, kib in soak["rss_samples"]] or [sum(after.values())]
    lines += [
        "## Soak",
        "",
        f"{run['requests']:,} `/mutate` requests (typical pod) on {plan['connections']}"
        f" keep-alive connections held throughout, one wrk run: `post.lua` stops sending at"
        f" {soak['limit']:,} responses and wrk then idles to the end of its `-d"
        f"{soak['seconds']}s` (sized from the rate above; wrk has no count option).",
        "One-worker server, after the runs above and a further warm-up.",
        f"Non-2xx: {run['non2xx']}; socket errors (connect/read/write/timeout): {run['errors']}.",
        "",
        _fmt_row(("process", "VmRSS before, KiB", "VmRSS after, KiB", "change, KiB")),
        _fmt_row(("---",) * 4),
    ]
    for pid in sorted(set(before) | set(after)):
        b, a = before.get(pid, 0), after.get(pid, 0)
        lines.append(_fmt_row((pid, f"{b:,}", f"{a:,}", f"{a - b:+,}")))
    lines += [
        "",
        f"Sampled every second during the soak: min {min(samples):,} KiB, max "
        f"{max(samples):,} KiB; from the first sample to the end: {soak_growth_kib(soak):+,} KiB."
        f" The goal counts that (flat: under {FLAT_RSS_KIB // 1024} MiB, i.e. under ~40 bytes"
        " per request); before-to-after also includes what the warm-up's closed connections"
        " still hold (next section).",
        "",
    ]
    churn = service["churn"]
    steps = ", ".join(f"{kib / 1024:.1f}" for kib in churn["rss_kib"])
    lines += [
        "### Connection churn",
        "",
        f"Then {len(churn['rss_kib']) - 1} one-second wrk runs, each opening and closing"
        f" {plan['connections']} fresh connections ({churn['connections']} in all). Server RSS"
        f" (MiB) before and after each run: {steps}; that is"
        f" {churn['per_connection_kib']:+,.0f} KiB per closed connection. See Profiling for"
        " what holds it and for how long.",
        "",
    ]
    return lines
