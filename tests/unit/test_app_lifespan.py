"""What the app does at start-up and shutdown, and what it leaves to ``serve``, checked in-process."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

from fastapi.testclient import TestClient

from harness.server import parse_metrics
from webhook.cluster.namespaces_file import NamespaceInfo, StaticNamespaces
from webhook.engine.config import InjectorConfig
from webhook.service.app import create_app


def test_an_app_leaves_the_garbage_collector_alone() -> None:
    """gc.freeze is process-wide, so it belongs to ``serve`` (tested in test_service_lifecycle)."""
    gc.unfreeze()
    app = create_app(config=InjectorConfig(), namespaces=StaticNamespaces())
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() == 0


@dataclass(frozen=True)
class Fresh:
    age_seconds: float
    reconnects: int
    relists: int


@dataclass
class WatchedNamespaces(StaticNamespaces):
    """A source with the freshness interface of the watch-backed cache, and a start/stop log."""

    events: list[str] = field(default_factory=list)
    fresh: Fresh = field(default_factory=lambda: Fresh(2.5, 3, 1))

    def __post_init__(self) -> None:
        super().__init__({"demo": NamespaceInfo("demo")})

    def start(self) -> None:
        self.events.append("start")

    def stop(self) -> None:
        self.events.append("stop")

    def freshness(self) -> Fresh:
        return self.fresh


def test_the_lifespan_starts_and_stops_the_namespace_source() -> None:
    source = WatchedNamespaces()
    app = create_app(config=InjectorConfig(), namespaces=source)
    with TestClient(app) as client:
        assert source.events == ["start"]
        assert client.get("/readyz").json() == {"status": "ready"}
    assert source.events == ["start", "stop"]


def test_metrics_show_the_namespace_sources_freshness_as_of_the_scrape() -> None:
    source = WatchedNamespaces()
    app = create_app(config=InjectorConfig(), namespaces=source)
    with TestClient(app) as client:
        first = parse_metrics(client.get("/metrics").text)
        source.fresh = Fresh(0.25, 4, 2)
        second = parse_metrics(client.get("/metrics").text)
    assert first["sidecar_injector_namespace_cache_age_seconds"] == 2.5
    assert first["sidecar_injector_namespace_watch_reconnects_total"] == 3
    assert first["sidecar_injector_namespace_relists_total"] == 1
    assert second["sidecar_injector_namespace_cache_age_seconds"] == 0.25
    assert second["sidecar_injector_namespace_watch_reconnects_total"] == 4
    assert second["sidecar_injector_namespace_relists_total"] == 2


def test_a_source_that_cannot_go_stale_exports_no_freshness() -> None:
    app = create_app(config=InjectorConfig(), namespaces=StaticNamespaces())
    with TestClient(app) as client:
        text = client.get("/metrics").text
    assert "namespace_cache_age" not in text
    assert "sidecar_injector_request_body_bytes_held 0.0" in text
