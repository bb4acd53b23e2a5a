"""``webhook.cluster.events_api`` against a server speaking HTTP: what it sends, how it fails.

The server is the fake API server with its Events API (``EventStore``)
routed; what the client sent is in the server's record of calls.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from harness.fake_kube_api import EventStore, FakeKubeAPI
from harness.fake_kube_api.events import PREFIX as EVENTS
from webhook.cluster.events_api import MERGE_PATCH, EventsAPI, EventWriteError


@pytest.fixture
def store(fake_api: FakeKubeAPI) -> EventStore:
    kept = EventStore()
    fake_api.route(EVENTS, kept)
    return kept


@pytest.fixture
def events(fake_api: FakeKubeAPI, store: EventStore) -> Iterator[EventsAPI]:
    made = EventsAPI(client.Configuration(host=fake_api.url))
    try:
        yield made
    finally:
        made.close()


EVENT = {
    "apiVersion": "events.k8s.io/v1",
    "kind": "Event",
    "metadata": {"name": "web.17a", "namespace": "shop"},
    "reason": "Injected",
}


def test_a_create_is_a_json_post_into_the_events_namespace(
    fake_api: FakeKubeAPI, events: EventsAPI
) -> None:
    events.create(EVENT, timeout=5)
    (write,) = fake_api.calls_to(EVENTS)
    assert (write.method, write.path) == ("POST", "/apis/events.k8s.io/v1/namespaces/shop/events")
    assert write.content_type == "application/json"
    assert write.body == EVENT


def test_a_series_update_is_a_merge_patch_of_the_named_event(
    fake_api: FakeKubeAPI, store: EventStore, events: EventsAPI
) -> None:
    events.create(EVENT, timeout=5)
    series = {"series": {"count": 3, "lastObservedTime": "2025-01-01T00:00:00.000000Z"}}
    events.patch("shop", "web.17a", series, timeout=5)
    patch = fake_api.calls_to(EVENTS)[-1]
    assert (patch.method, patch.path) == (
        "PATCH",
        "/apis/events.k8s.io/v1/namespaces/shop/events/web.17a",
    )
    assert patch.content_type == MERGE_PATCH == "application/merge-patch+json"
    assert store.series_counts() == [3]


def test_a_patch_of_an_event_that_is_gone_says_not_found(events: EventsAPI) -> None:
    with pytest.raises(EventWriteError) as raised:
        events.patch("shop", "expired", {"series": {"count": 2}}, timeout=5)
    assert raised.value.not_found
    assert raised.value.status == 404


def test_a_refused_write_says_why_in_one_line(store: EventStore, events: EventsAPI) -> None:
    store.refuse(403, "events are refused here")
    with pytest.raises(EventWriteError) as raised:
        events.create(EVENT, timeout=5)
    assert str(raised.value) == "HTTP 403: events are refused here"
    assert raised.value.status == 403
    assert not raised.value.not_found


def test_a_write_that_hangs_ends_at_its_timeout(store: EventStore, events: EventsAPI) -> None:
    store.hold = True
    with pytest.raises(EventWriteError, match=r"timed out|did not arrive"):
        events.create(EVENT, timeout=0.3)


def test_an_api_server_that_is_down_is_an_error_not_a_crash(fake_api: FakeKubeAPI) -> None:
    fake_api.stop()
    events = EventsAPI(client.Configuration(host=fake_api.url), connect_timeout=1)
    with pytest.raises(EventWriteError, match=r"Connection refused|NewConnectionError"):
        events.create(EVENT, timeout=1)
