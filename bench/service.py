"""The HTTPS service under load: ``/mutate`` against the baselines, workers, soak, big pod.

Servers run pinned to core 0 (``taskset -c 0``), the load generator (wrk, one
thread, keep-alive connections) to core 1, so they do not share a core; only
the two-worker run gives the server both cores and so competes with wrk, as
the report says. Every wrk run is bounded by a duration and, for the soak, a
response count; everything listens on 127.0.0.1 only.
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
from webhook.certs import write_certs

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "post.lua"
HOST = "127.0.0.1"
SERVER_CPUS = "0"
LOAD_CPU = "1"
# The soak's wrk run may not take longer than this, whatever the rate.
SOAK_MAX_SECONDS = 600


class BenchError(RuntimeError):
    """A server would not start or answer correctly, or wrk failed: no figures then."""


def make_certs(out: Path) -> Path:
    """CA + serving cert (SAN 127.0.0.1) in ``out``, made by the project's own ``certs``."""
    write_certs(out)
    return out


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


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


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
    """One server process (and its workers), pinned with taskset, logging to a file."""

    name: str
    argv: list[str]
    cpus: str
    ca: Path
    port: int
    log: Path
    expect_patch: bool
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}/mutate"

    def start(self, body: bytes, *, timeout: float = 60.0) -> None:
        """Start, then wait until a real admission request gets a correct answer."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["taskset", "-c", self.cpus, *self.argv],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stopping it reaches the workers
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

    def rss(self) -> dict[int, int]:
        """VmRSS (KiB) of every process of this server."""
        assert self.process is not None
        return {pid: rss_kib(pid) for pid in process_tree(self.process.pid)}

    def stop(self) -> None:
        """SIGTERM to the server's own process group, SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def webhook_argv(*, port: int, certs: Path, namespaces: Path, workers: int) -> list[str]:
    """``sidecar-injector serve`` as a user runs it (through this interpreter)."""
    argv = [sys.executable, "-m", "webhook", "serve", "--host", HOST, "--port", str(port)]
    argv += ["--cert-dir", str(certs), "--namespaces-file", str(namespaces)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    return argv


def baseline_argv(which: str, *, port: int, certs: Path, response_bytes: int = 0) -> list[str]:
    """One of ``bench.baselines``' apps, served like the webhook."""
    argv = [sys.executable, "-m", "bench.baselines", which]
    argv += ["--response-bytes", str(response_bytes)]
    return [*argv, "--host", HOST, "--port", str(port), "--cert-dir", str(certs)]


def wrk(
    url: str,
    body_file: Path,
    *,
    connections: int,
    seconds: int,
    limit: int = 0,
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
            result["connections"] = connections
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


def _medians(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    keys = ("rps", "p50_us", "p90_us", "p99_us", "p999_us", "mean_us")
    summary = {key: float(statistics.median(run[key] for run in runs)) for key in keys}
    summary["non2xx"] = float(sum(run["non2xx"] for run in runs))
    summary["errors"] = float(sum(run["errors"] for run in runs))
    summary["requests"] = float(sum(run["requests"] for run in runs))
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
                wrk(server.url, body_file, connections=connections, seconds=plan.seconds)
            )
    return runs


def _ratio_medians(
    runs: dict[str, list[dict[str, Any]]], pairs: Sequence[tuple[str, str]]
) -> dict[str, float]:
    """Per-round throughput ratios, then their median (the point of alternating)."""
    out = {}
    for top, bottom in pairs:
        ratios = [a["rps"] / b["rps"] for a, b in zip(runs[top], runs[bottom], strict=True)]
        out[f"{top}:{bottom}"] = float(statistics.median(ratios))
    return out


def _soak(server: Server, body_file: Path, plan: Plan, *, rate: float) -> dict[str, Any]:
    """Exactly ``plan.soak_requests`` /mutate requests on 8 held connections; RSS around it.

    wrk has no request-count option: ``post.lua`` stops sending at the count,
    but wrk still waits out its ``-d``. So ``-d`` is sized from the rate the
    comparison measured, with slack, and the idle tail is the price of an
    exact count over one set of connections (a new set per chunk would
    measure connection churn instead, which ``_churn`` does on purpose).
    """
    wrk(server.url, body_file, connections=plan.connections, seconds=max(plan.warmup_seconds, 1))
    before = server.rss()
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    start = time.monotonic()

    def sample() -> None:
        while not stop.wait(1.0):
            samples.append((time.monotonic() - start, sum(server.rss().values())))

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
    after = server.rss()
    return {
        "run": result,
        "seconds": seconds,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_samples": samples,
        "limit": plan.soak_requests,
    }


def _churn(server: Server, body_file: Path, plan: Plan, *, runs: int) -> dict[str, Any]:
    """RSS after each of ``runs`` one-second wrk runs, each on a fresh set of connections.

    Separates memory that follows connections (opened and closed by the
    client) from memory that follows requests (the soak).
    """
    rss = [sum(server.rss().values())]
    for _ in range(runs):
        wrk(server.url, body_file, connections=plan.connections, seconds=1)
        rss.append(sum(server.rss().values()))
    closed = runs * plan.connections
    return {
        "rss_kib": rss,
        "connections": closed,
        "per_connection_kib": (rss[-1] - rss[0]) / closed,
    }


def _mutate_response_bytes(
    body: bytes, *, log: Path, ca: Path, port: int, certs: Path, namespaces: Path
) -> int:
    """The size of /mutate's answer to ``body``, asked of a short-lived webhook."""
    probe = Server(
        "sizing",
        webhook_argv(port=port, certs=certs, namespaces=namespaces, workers=1),
        SERVER_CPUS,
        ca,
        port,
        log,
        expect_patch=True,
    )
    with running([probe], body):
        context = ssl.create_default_context(cafile=str(ca))
        conn = http.client.HTTPSConnection(HOST, port, context=context, timeout=10)
        try:
            conn.request("POST", "/mutate", body, {"Content-Type": "application/json"})
            return len(conn.getresponse().read())
        finally:
            conn.close()


def run(work: Path, plan: Plan) -> dict[str, Any]:
    """Every service scenario; servers live in ``work`` (certs, logs, bodies)."""
    work.mkdir(parents=True, exist_ok=True)
    certs = make_certs(work / "certs")
    namespaces = write_namespaces(work / "namespaces.json")
    typical = workload.review(workload.pod())
    big = workload.review(workload.pod(env_vars=1500))
    typical_file, big_file = work / "typical.json", work / "env1500.json"
    typical_file.write_bytes(typical)
    big_file.write_bytes(big)
    ca = certs / "ca.crt"

    def server(name: str, argv: list[str], port: int, cpus: str = SERVER_CPUS) -> Server:
        return Server(name, argv, cpus, ca, port, work / f"{name}.log", name.startswith("mutate"))

    ports = [free_port() for _ in range(5)]
    mutate = server(
        "mutate",
        webhook_argv(port=ports[0], certs=certs, namespaces=namespaces, workers=1),
        ports[0],
    )
    echo = server("echo", baseline_argv("echo", port=ports[1], certs=certs), ports[1])
    raw = server("raw", baseline_argv("raw", port=ports[2], certs=certs), ports[2])
    sized = _mutate_response_bytes(
        typical, log=work / "sizing.log", ca=ca, port=ports[4], certs=certs, namespaces=namespaces
    )
    raw_big = server(
        "raw-sized",
        baseline_argv("raw", port=ports[4], certs=certs, response_bytes=sized),
        ports[4],
    )
    two = server(
        "mutate-2-workers",
        webhook_argv(port=ports[3], certs=certs, namespaces=namespaces, workers=2),
        ports[3],
        cpus="0,1",
    )
    results: dict[str, Any] = {}
    results["plan"] = {
        "seconds": plan.seconds,
        "warmup_seconds": plan.warmup_seconds,
        "rounds": plan.rounds,
        "soak_requests": plan.soak_requests,
        "connections": plan.connections,
    }
    results["body_bytes"] = {"typical": len(typical), "env1500": len(big)}
    results["response_bytes"] = sized
    with running([mutate, echo, raw, raw_big], typical):
        runs = alternate(
            [mutate, echo, raw, raw_big], typical_file, plan, connections=plan.connections
        )
        results["compare"] = {
            "runs": runs,
            "medians": {name: _medians(found) for name, found in runs.items()},
            "ratios": _ratio_medians(
                runs,
                [("mutate", "echo"), ("echo", "raw"), ("mutate", "raw"), ("raw-sized", "raw")],
            ),
        }

        big_runs: dict[str, list[dict[str, Any]]] = {"c1": [], "c8": []}
        mutate.check(big)
        for _ in range(plan.rounds):
            for key, conns in (("c1", 1), ("c8", plan.connections)):
                if plan.warmup_seconds:
                    wrk(mutate.url, big_file, connections=conns, seconds=plan.warmup_seconds)
                big_runs[key].append(
                    wrk(mutate.url, big_file, connections=conns, seconds=plan.seconds)
                )
        results["big_pod"] = {
            "runs": big_runs,
            "medians": {key: _medians(found) for key, found in big_runs.items()},
        }

        results["soak"] = _soak(
            mutate, typical_file, plan, rate=results["compare"]["medians"]["mutate"]["rps"]
        )
        results["churn"] = _churn(mutate, typical_file, plan, runs=plan.churn_runs)

        workers: dict[str, Any] = {"supported": True}
        try:
            two.start(typical)
        except BenchError as err:
            workers = {"supported": False, "error": str(err)[-500:]}
        else:
            try:
                found = alternate([mutate, two], typical_file, plan, connections=plan.connections)
            finally:
                workers["rss_kib"] = two.rss()
                two.stop()
            workers["runs"] = found
            workers["medians"] = {name: _medians(items) for name, items in found.items()}
            workers["ratios"] = _ratio_medians(found, [("mutate-2-workers", "mutate")])
        results["workers"] = workers
    return results
