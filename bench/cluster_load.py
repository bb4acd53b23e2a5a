"""The load of the end-to-end section (``bench.cluster``): concurrent pod creations, timed.

Eight clients (asyncio, one kept-alive TLS connection each, as the admin)
post the same pod as fast as the API server answers; ``measure`` reads the
CPU of the processes named around the burst from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import h11
import orjson

from bench.service import cpu_seconds

if TYPE_CHECKING:
    from bench.cluster import Api, Plan


class ClusterBenchError(RuntimeError):
    """The end-to-end section went wrong (a creation failed, a webhook misbehaved)."""


@dataclass
class Burst:
    """What one case's burst of creations did."""

    pods: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    injected: int = 0
    response_bytes: int = 0
    latencies_ms: list[float] = field(default_factory=list)


async def _client(
    api: Api,
    *,
    path: str,
    body: bytes,
    tickets: Iterator[int],
    burst: Burst,
    ready: asyncio.Barrier,
) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", api.port, ssl=api.context, server_hostname="127.0.0.1"
    )
    conn = h11.Connection(h11.CLIENT)
    headers = [
        ("Host", f"127.0.0.1:{api.port}"),
        ("Content-Type", "application/json"),
        # What controllers ask for (client-go's protobuf for core types): the
        # created pod comes back cheaper to encode, send and read than as JSON.
        ("Accept", "application/vnd.kubernetes.protobuf"),
        ("Content-Length", str(len(body))),
    ]
    await ready.wait()
    try:
        for _ in tickets:
            started = time.perf_counter()
            writer.write(
                conn.send(h11.Request(method="POST", target=path, headers=headers))
                + conn.send(h11.Data(data=body))
                + conn.send(h11.EndOfMessage())
            )
            status, chunks = 0, []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
            conn.start_next_cycle()
            burst.latencies_ms.append((time.perf_counter() - started) * 1000)
            answer = b"".join(chunks)
            burst.response_bytes += len(answer)
            if status != 201:
                burst.failures.append(f"{status}: {answer[:300]!r}")
            elif b"mesh-proxy" in answer:
                burst.injected += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def _burst(api: Api, namespace: str, pod: dict[str, Any], plan: Plan, pods: int) -> Burst:
    body = orjson.dumps(pod)
    path = f"/api/v1/namespaces/{namespace}/pods"
    burst = Burst(pods=pods)
    tickets = iter(range(pods))  # shared: the loop is single-threaded
    ready = asyncio.Barrier(plan.clients + 1)
    tasks = [
        asyncio.create_task(
            _client(api, path=path, body=body, tickets=tickets, burst=burst, ready=ready)
        )
        for _ in range(plan.clients)
    ]
    await ready.wait()  # every connection open: handshakes are not timed
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    burst.seconds = time.perf_counter() - started
    return burst


def measure(
    api: Api, *, namespace: str, pod: dict[str, Any], plan: Plan, pods: dict[str, int]
) -> dict[str, Any]:
    """One burst; CPU of each process around it (pids by name, ``client`` is us)."""
    pids = {**pods, "client": os.getpid()}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    burst = asyncio.run(_burst(api, namespace, pod, plan, plan.pods))
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    if burst.failures:
        raise ClusterBenchError(
            f"{len(burst.failures)} of {burst.pods} creations in {namespace} failed: "
            f"{burst.failures[:3]}"
        )
    latencies = sorted(burst.latencies_ms)
    return {
        "pods": burst.pods,
        "seconds": burst.seconds,
        "pods_per_s": burst.pods / burst.seconds,
        "injected": burst.injected,
        "stored_bytes": burst.response_bytes / burst.pods,
        "create_p50_ms": statistics.median(latencies),
        "create_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "cpu_ms_per_pod": {name: (after[name] - before[name]) * 1000 / burst.pods for name in pids},
    }
