"""The HTTPS service under wrk: ``/mutate`` against two baselines, a big pod, a soak.

Servers run pinned to core 0 (``taskset -c 0``), the load generator (wrk, one
thread, keep-alive connections) to core 1, so they do not share a core. Every
wrk run is bounded by a duration and, for the soak, a response count;
everything listens on 127.0.0.1 only. With a "before" tree (``bench.before``)
its ``serve`` joins the alternation, so old and new are measured in the same
rounds against the same baselines.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import workload
from webhook.pki.certs import write_certs

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "post.lua"
HOST = "127.0.0.1"
SERVER_CPUS = "0"
LOAD_CPU = "1"
# The soak's wrk run may not take longer than this, whatever the rate.
SOAK_MAX_SECONDS = 600
TOOLS = {"wrk": "wrk", "taskset": "util-linux"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A server would not start or answer correctly, or wrk failed: no figures then."""


def write_namespaces(path: Path) -> Path:
    """The namespaces file that opts the benchmark namespace in, as a cluster would."""
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": workload.NAMESPACE, "labels": workload.NAMESPACE_LABELS},
    }
    path.write_text(json.dumps(namespace))  # JSON is YAML
    return path


def free_port() -> int:
    """A port nobody listens on right now (the server binds it moments later)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads, from ``/proc/PID/stat``.

    Unlike throughput, CPU per request does not depend on how much of its
    core a server got, so it compares servers fairly on a shared machine.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


@dataclass
class Server:
    """One server process, pinned with taskset, logging to a file."""

    name: str
    argv: list[str]
    ca: Path
    port: int
    log: Path
    expect_patch: bool
    cpus: str = SERVER_CPUS
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}/mutate"

    def start(self, body: bytes, *, timeout: float = 60.0) -> None:
        """Start, then wait until a real admission request gets a correct answer."""
        env = dict(os.environ)
        if self.name in ("echo", "raw"):
            # The baselines are modules of bench/. Never for the webhooks: the
            # "before" one must import its own tree, not this one.
            env["PYTHONPATH"] = str(ROOT)
        env.pop("KUBECONFIG", None)  # a developer's would switch serve to their cluster
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["taskset", "-c", self.cpus, *self.argv],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                self.check(body)
                return
            except (OSError, http.client.HTTPException) as err:
                last = err
                time.sleep(0.2)
        self.stop()
        raise BenchError(f"{self.name} did not answer within {timeout}s: {last}")

    def check(self, body: bytes) -> None:
        """POST one review; the webhook must have injected (else we would time a skip)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        conn = http.client.HTTPSConnection(HOST, self.port, context=context, timeout=10)
        try:
            conn.request("POST", "/mutate", body, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            data = reply.read()
        finally:
            conn.close()
        if reply.status != 200:
            raise BenchError(f"{self.name}: HTTP {reply.status}: {data[:500]!r}")
        answer = orjson.loads(data)["response"]
        if not answer.get("allowed"):
            raise BenchError(f"{self.name}: not allowed: {answer}")
        if self.expect_patch and b"mesh-proxy" not in base64.b64decode(answer.get("patch", "")):
            raise BenchError(f"{self.name}: no injection patch in {answer}")

    def rss(self) -> int:
        """VmRSS of the server (KiB)."""
        assert self.process is not None
        return rss_kib(self.process.pid)

    def measure(self, body_file: Path, *, connections: int, seconds: int) -> dict[str, Any]:
        """One wrk run against this server, with the server's CPU time per request."""
        assert self.process is not None
        before = cpu_seconds(self.process.pid)
        result = wrk(self.url, body_file, connections=connections, seconds=seconds)
        spent = cpu_seconds(self.process.pid) - before
        result["cpu_us_per_request"] = spent * 1e6 / max(result["requests"], 1)
        return result

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def webhook_argv(cli: Sequence[str], *, port: int, certs: Path, namespaces: Path) -> list[str]:
    """``sidecar-injector serve`` as a user runs it."""
    return [
        *cli,
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--cert-dir",
        str(certs),
        "--namespaces-file",
        str(namespaces),
    ]


def baseline_argv(which: str, *, port: int, certs: Path) -> list[str]:
    """One of ``bench.baselines``' apps, served like the webhook."""
    return [
        sys.executable,
        "-m",
        "bench.baselines",
        which,
        "--host",
        HOST,
        "--port",
        str(port),
        "--cert-dir",
        str(certs),
    ]


def wrk(
    url: str, body_file: Path, *, connections: int, seconds: int, limit: int = 0
) -> dict[str, Any]:
    """One wrk run from core 1; the figures ``post.lua`` prints, as a dict."""
    argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    argv += ["--timeout", "10s", "-s", str(LUA), url, "--", str(body_file), str(limit)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise BenchError(f"wrk ran past its bound: {' '.join(argv)}") from err
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            result["errors"] = sum(
                result[key] for key in ("connect_errors", "read_errors", "write_errors", "timeouts")
            )
            return result
    raise BenchError(f"wrk failed ({done.returncode}): {done.stdout[-1500:]} {done.stderr[-1500:]}")


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how often: the full run's numbers, or tiny ones for the smoke test."""

    seconds: int
    warmup_seconds: int
    rounds: int
    soak_requests: int
    churn_runs: int = 10
    connections: int = 8


def medians(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Median of each figure over rounds; sums for the counts."""
    keys = ("rps", "p50_us", "p99_us", "p999_us", "cpu_us_per_request")
    summary = {key: float(statistics.median(run[key] for run in runs)) for key in keys}
    for key in ("non2xx", "errors", "requests"):
        summary[key] = float(sum(run[key] for run in runs))
    return summary


@contextlib.contextmanager
def running(servers: Sequence[Server], body: bytes) -> Iterator[None]:
    """Start all, stop all (also on failure, so no server outlives the bench)."""
    try:
        for server in servers:
            server.start(body)
        yield
    finally:
        for server in servers:
            server.stop()


def alternate(
    servers: Sequence[Server], body_file: Path, plan: Plan, *, connections: int
) -> dict[str, list[dict[str, Any]]]:
    """A B C A B C ...: each round runs every server once, warm-up excluded."""
    runs: dict[str, list[dict[str, Any]]] = {server.name: [] for server in servers}
    for _ in range(plan.rounds):
        for server in servers:
            if plan.warmup_seconds:
                wrk(server.url, body_file, connections=connections, seconds=plan.warmup_seconds)
            runs[server.name].append(
                server.measure(body_file, connections=connections, seconds=plan.seconds)
            )
    return runs


def ratio(
    runs: dict[str, list[dict[str, Any]]], top: str, bottom: str, *, key: str = "rps"
) -> float:
    """Median of the per-round ratios of ``key`` (the point of alternating)."""
    pairs = zip(runs[top], runs[bottom], strict=True)
    return float(statistics.median(a[key] / b[key] for a, b in pairs))


def _soak(server: Server, body_file: Path, plan: Plan, *, rate: float) -> dict[str, Any]:
    """Exactly ``plan.soak_requests`` requests on held connections; RSS sampled every second.

    wrk has no request-count option: ``post.lua`` stops sending at the count,
    and ``-d`` is sized from the measured rate with slack.
    """
    wrk(server.url, body_file, connections=plan.connections, seconds=max(plan.warmup_seconds, 1))
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            samples.append(server.rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    seconds = min(SOAK_MAX_SECONDS, max(2, math.ceil(plan.soak_requests / (0.7 * rate))))
    try:
        result = wrk(
            server.url,
            body_file,
            connections=plan.connections,
            seconds=seconds,
            limit=plan.soak_requests,
        )
    finally:
        stop.set()
        sampler.join()
    end = server.rss()
    # From the first sample (a second in, connections open) to the end: what
    # follows requests, not what the warm-up's closed connections still hold.
    growth = end - (samples[0] if samples else end)
    return {"run": result, "seconds": seconds, "rss_end_kib": end, "growth_kib": growth}


def _churn(server: Server, body_file: Path, plan: Plan) -> dict[str, Any]:
    """RSS after each of ``plan.churn_runs`` one-second wrk runs, each on fresh connections."""
    rss = [server.rss()]
    for _ in range(plan.churn_runs):
        wrk(server.url, body_file, connections=plan.connections, seconds=1)
        rss.append(server.rss())
    closed = plan.churn_runs * plan.connections
    return {
        "rss_kib": rss,
        "connections": closed,
        "per_connection_kib": (rss[-1] - rss[0]) / closed,
    }


def run(work: Path, plan: Plan, *, before_cli: Path | None = None) -> dict[str, Any]:
    """Every service scenario; servers live in ``work`` (certs, logs, bodies)."""
    work.mkdir(parents=True, exist_ok=True)
    certs = work / "certs"
    write_certs(certs)
    namespaces = write_namespaces(work / "namespaces.json")
    typical, big = workload.review(workload.pod()), workload.review(workload.pod(env_vars=1500))
    typical_file, big_file = work / "typical.json", work / "env1500.json"
    typical_file.write_bytes(typical)
    big_file.write_bytes(big)
    ca = certs / "ca.crt"

    def server(name: str, argv: list[str], port: int) -> Server:
        return Server(name, argv, ca, port, work / f"{name}.log", name.startswith("mutate"))

    webhooks = {"mutate": [sys.executable, "-m", "webhook"]}
    if before_cli is not None:
        webhooks["mutate-before"] = [str(before_cli)]
    servers = []
    for name, cli in webhooks.items():
        port = free_port()
        servers.append(
            server(name, webhook_argv(cli, port=port, certs=certs, namespaces=namespaces), port)
        )
    for which in ("echo", "raw"):
        port = free_port()
        servers.append(server(which, baseline_argv(which, port=port, certs=certs), port))
    mutate = servers[0]
    results: dict[str, Any] = {
        "plan": {
            "seconds": plan.seconds,
            "warmup_seconds": plan.warmup_seconds,
            "rounds": plan.rounds,
            "soak_requests": plan.soak_requests,
            "connections": plan.connections,
        },
        "body_bytes": {"typical": len(typical), "env1500": len(big)},
    }
    with running(servers, typical):
        runs = alternate(servers, typical_file, plan, connections=plan.connections)
        results["compare"] = {
            "runs": runs,
            "medians": {name: medians(found) for name, found in runs.items()},
            "ratios": {f"{name}:echo": ratio(runs, name, "echo") for name in (*webhooks, "raw")},
            # The echo's CPU per request over each server's: the throughput
            # ratio without the noise of a shared machine.
            "cpu_ratios": {
                f"{name}:echo": ratio(runs, "echo", name, key="cpu_us_per_request")
                for name in (*webhooks, "raw")
            },
        }
        big_runs: dict[str, list[dict[str, Any]]] = {"c1": [], "c8": []}
        mutate.check(big)
        for _ in range(plan.rounds):
            for key, conns in (("c1", 1), ("c8", plan.connections)):
                if plan.warmup_seconds:
                    wrk(mutate.url, big_file, connections=conns, seconds=plan.warmup_seconds)
                big_runs[key].append(
                    mutate.measure(big_file, connections=conns, seconds=plan.seconds)
                )
        results["big_pod"] = {key: medians(found) for key, found in big_runs.items()}
        rate = results["compare"]["medians"]["mutate"]["rps"]
        results["soak"] = _soak(mutate, typical_file, plan, rate=rate)
        results["churn"] = _churn(mutate, typical_file, plan)
    return results
