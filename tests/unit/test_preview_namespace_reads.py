"""A preview's namespace reads are bounded in time, whatever the body names.

``/preview`` reads every uncached namespace its objects name, one after
another, each up to the source's fetch timeout (2 s). A hundred objects in a
hundred namespaces, while the API server hangs, would keep the only preview
slot for minutes. Once ``Limits.preview_lookup_seconds`` have gone into reads,
the rest come from the cache or are treated as unlabelled, with a warning
naming them. No wall time is measured: the budget is set to zero or left
generous, and the reads are counted at the source.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import orjson
from fastapi.testclient import TestClient

from webhook.cluster.namespaces_file import NamespaceInfo, StaticNamespaces
from webhook.engine.config import InjectorConfig
from webhook.service.app import create_app
from webhook.service.limits import Limits

ENABLED = MappingProxyType({"sidecar-injection": "enabled"})


class CountingSource(StaticNamespaces):
    """Caches only ``cached-ns``; every other name must be fetched (and exists, opted in)."""

    def __init__(self) -> None:
        super().__init__({"cached-ns": NamespaceInfo("cached-ns", ENABLED)})
        self.fetched: list[str] = []

    def cached(self, name: str) -> NamespaceInfo | None:
        return super().cached(name) if name == "cached-ns" else None

    def fetch(self, name: str) -> NamespaceInfo | None:
        self.fetched.append(name)
        return NamespaceInfo(name, ENABLED)


def pods(*namespaces: str) -> bytes:
    items: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"web-{index}", "namespace": name},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        }
        for index, name in enumerate(namespaces)
    ]
    return orjson.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def preview(source: CountingSource, body: bytes, **limits: Any) -> list[dict[str, Any]]:
    app = create_app(config=InjectorConfig(), namespaces=source, limits=Limits(**limits))
    with TestClient(app) as client:
        answer = client.post("/preview", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    results: list[dict[str, Any]] = answer.json()
    return results


def test_within_the_budget_every_uncached_namespace_is_read_once() -> None:
    source = CountingSource()
    results = preview(source, pods("a", "b", "a", "cached-ns"))
    assert source.fetched == ["a", "b"]
    assert [result["injected"] for result in results] == [True] * 4
    assert all(result["warnings"] == [] for result in results)


def test_once_the_budget_is_spent_namespaces_come_from_the_cache_or_none() -> None:
    source = CountingSource()
    results = preview(source, pods("a", "b", "cached-ns"), preview_lookup_seconds=0.0)
    assert source.fetched == []
    injected = [result["injected"] for result in results]
    # a and b are treated as unlabelled (not opted in); the cached one is known.
    assert injected == [False, False, True]
    for result in results:
        spent = [w for w in result["warnings"] if "for namespace reads are spent" in w]
        assert [w.split()[1] for w in spent] == ["a", "b"]
