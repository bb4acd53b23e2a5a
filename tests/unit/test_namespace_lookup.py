"""The service's one namespace-lookup adapter (``webhook.service.namespace_lookup``), alone.

``/mutate`` fetches through it on the event loop (counted, fail closed is
the caller's); ``/preview`` reads through it in a thread within a time
budget, with a warning for each namespace it could not read. Both reach the
source only through ``SourceLookup.read``. No wall time is measured: budgets
are zero or generous.
"""

from __future__ import annotations

from types import MappingProxyType

import anyio
import pytest

from webhook.cluster.namespaces_file import NamespaceInfo, NamespaceUnavailable, StaticNamespaces
from webhook.engine import NamespaceLike
from webhook.service.metrics import Metrics
from webhook.service.namespace_lookup import SourceLookup

ENABLED = MappingProxyType({"sidecar-injection": "enabled"})


class Source(StaticNamespaces):
    """Caches ``cached-ns``; fetches ``down-*`` as unavailable, ``gone-*`` as absent."""

    def __init__(self) -> None:
        super().__init__({"cached-ns": NamespaceInfo("cached-ns", ENABLED)})
        self.fetched: list[str] = []

    def fetch(self, name: str) -> NamespaceInfo | None:
        self.fetched.append(name)
        if name.startswith("down-"):
            raise NamespaceUnavailable("the API server did not answer")
        if name.startswith("gone-"):
            return None
        return NamespaceInfo(name, ENABLED)


class CountingLookup(SourceLookup):
    def __init__(self, source: Source, metrics: Metrics) -> None:
        super().__init__(source, metrics)
        self.reads: list[str] = []

    def read(self, name: str) -> NamespaceLike | None:
        self.reads.append(name)
        return super().read(name)


def fetches(metrics: Metrics) -> dict[tuple[str, str], float]:
    counts = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "sidecar_injector_namespace_fetches_total":
                counts[sample.labels["reason"], sample.labels["result"]] = sample.value
    return counts


def test_a_fetch_reads_the_source_and_counts_by_reason_and_result() -> None:
    source, metrics = Source(), Metrics()
    lookup = SourceLookup(source, metrics)

    async def run() -> None:
        assert await lookup.fetch("new", reason="miss") == NamespaceInfo("new", ENABLED)
        assert await lookup.fetch("gone-1", reason="recheck") is None
        with pytest.raises(NamespaceUnavailable):
            await lookup.fetch("down-1", reason="miss")

    anyio.run(run)
    assert source.fetched == ["new", "gone-1", "down-1"]
    assert fetches(metrics) == {
        ("miss", "found"): 1.0,
        ("recheck", "absent"): 1.0,
        ("miss", "unavailable"): 1.0,
    }


def test_budgeted_reads_answer_from_memory_then_the_source_and_warn_when_it_cannot_tell() -> None:
    source, metrics = Source(), Metrics()
    reads = SourceLookup(source, metrics).within(3600)
    assert reads("cached-ns") == NamespaceInfo("cached-ns", ENABLED)
    assert reads("new") == NamespaceInfo("new", ENABLED)
    assert reads("down-1") is None
    assert source.fetched == ["new", "down-1"]
    assert reads.warnings == [
        "namespace down-1 could not be read (the API server did not answer);"
        " treated as having no labels"
    ]
    # A preview's reads are not admissions: not counted.
    assert fetches(metrics) == {}


def test_once_the_budget_is_spent_only_memory_answers_and_each_miss_is_a_warning() -> None:
    source = Source()
    reads = SourceLookup(source, Metrics()).within(0)
    assert reads("cached-ns") == NamespaceInfo("cached-ns", ENABLED)
    assert reads("new") is None
    assert source.fetched == []
    assert reads.warnings == [
        "namespace new was not read (this preview's 0 s for namespace reads are spent);"
        " treated as having no labels"
    ]


def test_every_read_of_the_source_goes_through_read_whoever_asks() -> None:
    lookup = CountingLookup(Source(), Metrics())
    anyio.run(lambda: lookup.fetch("for-mutate", reason="miss"))
    lookup.within(3600)("for-preview")
    assert lookup.reads == ["for-mutate", "for-preview"]
