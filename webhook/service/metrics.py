"""Prometheus metrics of the admission service, one registry per app.

A registry per app (not prometheus-client's global one) lets tests and
benchmarks build several apps in one process without "duplicated timeseries"
errors, and keeps library metrics (the kubernetes client, GC) out of the
webhook's ``/metrics`` unless we add them on purpose.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

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


class Freshness(Protocol):
    """How current the namespace source is (``webhook.cluster.namespaces_file.Freshness`` fits)."""

    @property
    def age_seconds(self) -> float: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def relists(self) -> int: ...


class _FreshnessCollector(Collector):
    """The namespace source's freshness, read when Prometheus scrapes (not on every change)."""

    def __init__(self, read: Callable[[], Freshness | None]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        fresh = self._read()
        if fresh is None:  # a file or no source: nothing goes stale
            return
        yield GaugeMetricFamily(
            "sidecar_injector_namespace_cache_age_seconds",
            "Seconds since the namespace cache last knew it was in sync with the API server "
            "(last list, watch event or bookmark).",
            value=fresh.age_seconds,
        )
        yield CounterMetricFamily(
            "sidecar_injector_namespace_watch_reconnects",
            "Namespace watch (re)connections after the first one.",
            value=fresh.reconnects,
        )
        yield CounterMetricFamily(
            "sidecar_injector_namespace_relists",
            "Full lists of the namespaces after the first one (e.g. after 410 Gone).",
            value=fresh.relists,
        )

    def describe(self) -> list[Metric]:
        # Describing would call the source during registration; nothing to check there.
        return []


class _CertificateExpiryCollector(Collector):
    """The serving certificate's notAfter, read when Prometheus scrapes (it changes on reload)."""

    def __init__(self, read: Callable[[], float | None]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        expires = self._read()
        if expires is None:  # no certificate loaded: no sample rather than a made-up one
            return
        yield GaugeMetricFamily(
            "sidecar_injector_certificate_expiry_timestamp_seconds",
            "When the serving certificate new handshakes get expires (Unix time); "
            "alert when it is less than 14 days away.",
            value=expires,
        )

    def describe(self) -> list[Metric]:
        return []


class Metrics:
    """The webhook's counters, gauges and histogram, registered in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sidecar_injector_requests",
            "HTTP requests by endpoint and outcome: ok, refused (allowed: false), bad_request, "
            "too_large, unsupported_media_type, busy (503: request memory budget in use), "
            "aborted (the connection ended before the request was read), error (a bug).",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "sidecar_injector_decisions",
            "Admission decisions by code (the engine's decision codes, plus refused, "
            "not-create, not-a-pod and namespace-unavailable).",
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
        self.read_timeouts = Counter(
            "sidecar_injector_read_timeouts",
            "Connections closed because a request's headers or body did not arrive in time.",
            ["phase"],
            registry=self.registry,
        )
        self.namespace_fetches = Counter(
            "sidecar_injector_namespace_fetches",
            "Namespaces read from the source during admission: reason miss (not cached) or "
            "recheck (cached as not opted in); result found, absent or unavailable.",
            ["reason", "result"],
            registry=self.registry,
        )
        self.events = Counter(
            "sidecar_injector_events",
            "Admissions worth an Event (Injected, InjectionSkipped, InjectionRefused on the pod's "
            "owner), by what became of them: sent (the API server has it, in an Event or its "
            "series count), failed (its write failed), dropped (never written: the queue was "
            "full, or serve stopped first).",
            ["reason", "outcome"],
            registry=self.registry,
        )
        self.event_writes = Counter(
            "sidecar_injector_event_writes",
            "Requests to the Events API: create (a new Event) or patch (a series count), "
            "by result (ok, error).",
            ["verb", "result"],
            registry=self.registry,
        )
        self.events_pending = Gauge(
            "sidecar_injector_events_pending",
            "Admissions worth an Event that are counted but not written yet.",
            registry=self.registry,
        )
        self.namespace_waits = Counter(
            "sidecar_injector_namespace_waits",
            "Reviews that waited for the namespace watch to deliver a namespace the cache did "
            "not know, instead of reading it: result arrived or not_arrived (then read, or "
            "refused).",
            ["result"],
            registry=self.registry,
        )
        self.namespace_reads_refused = Counter(
            "sidecar_injector_namespace_reads_refused",
            "Namespace reads refused during admission (the pod refused with a 503): reason "
            "client_busy (its client has as many reads under way as allowed) or absent (read "
            "as missing moments ago, not delivered by the watch since).",
            ["reason"],
            registry=self.registry,
        )
        self.body_bytes = Gauge(
            "sidecar_injector_request_body_bytes_held",
            "Bytes of request bodies held in memory (or reserved for them) right now.",
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "sidecar_injector_connections_refused",
            "Connections reset as soon as accepted because their client (source address) "
            "already held as many as one client may (--max-connections-per-client).",
            registry=self.registry,
        )
        self.connections_open = Gauge(
            "sidecar_injector_connections_open",
            "Connections open right now (TLS handshakes under way included).",
            registry=self.registry,
        )
        self.heap_trims = Counter(
            "sidecar_injector_heap_trims",
            "Full garbage collections and C heap trims after connections closed.",
            registry=self.registry,
        )
        self.connections_busiest_client = Gauge(
            "sidecar_injector_connections_busiest_client",
            "The most connections one client (source address) holds right now; "
            "compare with --max-connections-per-client.",
            registry=self.registry,
        )

        # Children by label values, looked up once: ``labels()`` validates and
        # locks on every call, which cost as much as the rest of recording an
        # admission. The label sets are small and fixed by the code.
        self._observed: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._decided: dict[str, Counter] = {}

    def observe(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Count one request and its latency."""
        children = self._observed.get((endpoint, outcome))
        if children is None:
            children = (self.requests.labels(endpoint, outcome), self.duration.labels(endpoint))
            self._observed[(endpoint, outcome)] = children
        children[0].inc()
        children[1].observe(seconds)

    def decision(self, code: str) -> None:
        """Count one admission decision."""
        child = self._decided.get(code)
        if child is None:
            child = self._decided[code] = self.decisions.labels(code)
        child.inc()

    def read_timeout(self, phase: str) -> None:
        """Count a connection dropped for missing its read deadline (``headers``/``body``)."""
        self.read_timeouts.labels(phase).inc()

    def namespace_fetch(self, reason: str, result: str) -> None:
        """Count one namespace read from the source during admission."""
        self.namespace_fetches.labels(reason, result).inc()

    def event(self, reason: str, outcome: str, count: int = 1) -> None:
        """Count ``count`` occurrences of an Event ``reason``: sent, failed or dropped."""
        self.events.labels(reason, outcome).inc(count)

    def event_write(self, verb: str, result: str) -> None:
        """Count one request to the Events API (``create``/``patch``, ``ok``/``error``)."""
        self.event_writes.labels(verb, result).inc()

    def namespace_wait(self, result: str) -> None:
        """Count one wait for the watch to deliver a namespace (``arrived``/``not_arrived``)."""
        self.namespace_waits.labels(result).inc()

    def namespace_read_refused(self, reason: str) -> None:
        """Count one namespace read refused during admission (``client_busy``/``absent``)."""
        self.namespace_reads_refused.labels(reason).inc()

    def connection_refused(self) -> None:
        """Count one connection refused at accept for its client's cap."""
        self.connections_refused.inc()

    def connection_counts(self, *, total: Callable[[], int], busiest: Callable[[], int]) -> None:
        """Read the open connections (all, and the busiest client's) at every scrape."""
        self.connections_open.set_function(total)
        self.connections_busiest_client.set_function(busiest)

    def watch_freshness(self, read: Callable[[], Freshness | None]) -> None:
        """Render the namespace source's freshness at every scrape (see ``_FreshnessCollector``)."""
        self.registry.register(_FreshnessCollector(read))

    def certificate_expiry(self, read: Callable[[], float | None]) -> None:
        """Render the serving certificate's expiry time at every scrape."""
        self.registry.register(_CertificateExpiryCollector(read))

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
