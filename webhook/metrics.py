"""Prometheus metrics of the admission service, one registry per app.

A registry per app (not prometheus-client's global one) lets tests and
benchmarks build several apps in one process without "duplicated timeseries"
errors, and keeps library metrics (the kubernetes client, GC) out of the
webhook's ``/metrics`` unless we add them on purpose.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Admission latency lives in the sub-millisecond to tens-of-milliseconds range;
# kube-apiserver's default webhook timeout is 10 s but anything near 1 s is
# already an incident, so finer buckets at the low end, none past ~1 s.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


class Metrics:
    """The webhook's counters and histogram, registered in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sidecar_injector_requests",
            "HTTP requests by endpoint and outcome (ok, bad_request, too_large, "
            "unsupported_media_type, refused, error).",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "sidecar_injector_decisions",
            "Admission decisions by code (the engine's decision codes, plus refused, "
            "not-create and not-a-pod).",
            ["code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "sidecar_injector_request_duration_seconds",
            "Time from the request's first byte being handled to the response being ready.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Count one request and its latency."""
        self.requests.labels(endpoint, outcome).inc()
        self.duration.labels(endpoint).observe(seconds)

    def decision(self, code: str) -> None:
        """Count one admission decision."""
        self.decisions.labels(code).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
