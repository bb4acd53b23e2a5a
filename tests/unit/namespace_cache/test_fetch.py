"""Reading a namespace the watch has not delivered: shared, bounded, timed out, never stale."""

from __future__ import annotations

import gzip
import json
import threading
import time

import pytest

from harness.fake_kube_api import CannedReply, FakeKubeAPI
from harness.threads import PATIENCE, eventually, waiting_for_a_future
from tests.unit.namespace_cache.support import (
    CacheFactory,
)
from webhook.cluster import namespace_cache as kube_namespaces
from webhook.cluster.namespace_cache import KubeNamespaceCache
from webhook.cluster.namespaces_file import (
    NamespaceInfo,
    NamespaceUnavailable,
    lookup,
)

# --- fetch ------------------------------------------------------------------------------


def test_fetch_reads_a_namespace_the_watch_has_not_delivered_and_caches_it(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    api.add("brand-new", {"sidecar-injection": "enabled"}, emit=False)
    assert synced.cached("brand-new") is None
    info = synced.fetch("brand-new")
    assert info is not None
    assert dict(info.labels) == {"sidecar-injection": "enabled"}
    assert synced.cached("brand-new") == info
    assert api.requests["get"] == 1


def test_lookup_answers_from_memory_and_fetches_only_on_a_miss(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    api.add("unseen", {"sidecar-injection": "enabled"}, emit=False)
    demo = lookup(synced, "demo")
    assert demo is not None
    assert dict(demo.labels) == {"sidecar-injection": "enabled"}
    assert api.requests["get"] == 0
    unseen = lookup(synced, "unseen")
    assert unseen is not None
    assert dict(unseen.labels) == {"sidecar-injection": "enabled"}
    assert lookup(synced, "nowhere") is None
    assert api.requests["get"] == 2


@pytest.mark.parametrize("removed_by", ["a DELETED event", "a relist"])
def test_a_namespace_deleted_while_it_is_fetched_does_not_come_back(
    api: FakeKubeAPI, make_cache: CacheFactory, removed_by: str
) -> None:
    cache = make_cache(fetch_timeout=PATIENCE)
    assert cache.wait_ready(PATIENCE)
    api.add("doomed", {"sidecar-injection": "enabled"}, emit=False)  # not delivered yet
    api.hold_get_replies.set()
    results: list[NamespaceInfo | None] = []
    fetcher = threading.Thread(target=lambda: results.append(cache.fetch("doomed")))
    fetcher.start()
    eventually(lambda: api.held_gets == 1, what="the GET to have read the namespace")
    if removed_by == "a DELETED event":
        api.delete("doomed")
    else:  # the deletion's event is lost; the watch gets 410 and lists again
        api.delete("doomed", emit=False)
        api.expire()
        eventually(lambda: api.requests["list"] == 2, what="the relist")
    eventually(lambda: cache.resource_version == api.resource_version, what="the removal")
    api.release_gets()
    fetcher.join(PATIENCE)
    assert [info.name if info else None for info in results] == ["doomed"]  # what it read
    assert cache.cached("doomed") is None
    api.add("later")  # the watch goes on; the deleted namespace stays gone
    eventually(lambda: cache.cached("later") is not None, what="a later event")
    assert cache.cached("doomed") is None


def test_fetch_of_a_namespace_that_does_not_exist_is_none(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    assert synced.fetch("missing") is None
    assert synced.cached("missing") is None
    assert api.requests["get"] == 1


def test_fetch_of_a_name_no_namespace_can_have_is_none_without_a_request(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    for name in ("Upper", "a/b", "../secrets", "x" * 64, "", "dot.ted"):
        assert synced.fetch(name) is None
    assert api.requests["get"] == 0


def status_reply(code: int, reason: str, message: str) -> CannedReply:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    return CannedReply(code, json.dumps({**body, "reason": reason, "message": message}).encode())


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(
            status_reply(500, "InternalError", "etcdserver: leader changed"),
            "HTTP 500: etcdserver: leader changed",
            id="5xx",
        ),
        pytest.param(
            status_reply(503, "ServiceUnavailable", "the server is shutting down"),
            "HTTP 503: the server is shutting down",
            id="503",
        ),
        pytest.param(
            status_reply(403, "Forbidden", 'cannot get resource "namespaces"'),
            'HTTP 403: cannot get resource "namespaces"',
            id="forbidden",
        ),
        pytest.param(
            status_reply(429, "TooManyRequests", "too many requests"), "HTTP 429", id="429"
        ),
        pytest.param(CannedReply(502, b"<html>bad gateway</html>"), "HTTP 502", id="proxy-5xx"),
        pytest.param(
            CannedReply(404, b"<html>no such page</html>"),
            "HTTP 404 without a Kubernetes NotFound status",
            id="404-not-from-the-api-server",
        ),
        pytest.param(CannedReply(200, b'{"kind": "Namespace", "meta'), "not a Namespace", id="cut"),
        pytest.param(CannedReply(200, b"\x00\xffgarbage"), "not a Namespace", id="garbled"),
        pytest.param(CannedReply(200, b"[1, 2]"), "not a Namespace", id="not-an-object"),
        pytest.param(
            CannedReply(200, b'{"kind": "Namespace", "metadata": {"name": "other"}}'),
            "answered for other",
            id="another-namespace",
        ),
        pytest.param(
            CannedReply(200, b'{"metadata": {"name": "wanted", "labels": {"a": 1}}}'),
            "expected a string",
            id="non-string-label",
        ),
        pytest.param(
            CannedReply(
                200,
                gzip.compress(b'{"metadata": {"name": "wanted"}}'),
                (("Content-Type", "application/json"), ("Content-Encoding", "gzip")),
            ),
            "Content-Encoding 'gzip'",
            id="compressed",
        ),
        pytest.param(
            CannedReply(200, b" " * (kube_namespaces.MAX_OBJECT_BYTES + 1)),
            "over the 4194304-byte limit",
            id="oversized",
        ),
    ],
)
def test_fetch_raises_unavailable_for_every_answer_but_a_namespace_or_not_found(
    api: FakeKubeAPI, synced: KubeNamespaceCache, reply: CannedReply, expected: str
) -> None:
    api.get_reply = reply
    with pytest.raises(NamespaceUnavailable) as caught:
        synced.fetch("wanted")
    message = str(caught.value)
    assert message.startswith("namespace wanted: ")
    assert expected in message
    assert "\n" not in message
    assert api.requests["get"] == 1  # no retries: admission decides, the apiserver retries
    assert synced.cached("wanted") is None


def test_fetch_raises_unavailable_when_the_api_server_is_down(
    api: FakeKubeAPI, synced: KubeNamespaceCache
) -> None:
    api.stop()
    with pytest.raises(NamespaceUnavailable, match=r"namespace brand-new: .*Connection refused"):
        synced.fetch("brand-new")


@pytest.mark.parametrize("hang", ["no answer", "a body that trickles"])
def test_fetch_gives_up_after_its_timeout_while_the_api_server_still_hangs(
    api: FakeKubeAPI, synced: KubeNamespaceCache, hang: str
) -> None:
    if hang == "no answer":
        api.stall_gets.set()
    else:
        api.trickle_gets = True
    started = time.monotonic()
    # Whichever comes first says so: the caller's wait, or the GET's own read timeout.
    with pytest.raises(NamespaceUnavailable, match=r"within 0\.5s|read timeout=0\.5"):
        synced.fetch("demo-2")
    # The server is still holding the request: fetch did not wait for it.
    assert api.stall_gets.is_set() or api.trickle_gets
    assert time.monotonic() - started < PATIENCE
    assert api.requests["get"] == 1  # urllib3's retries are off
    api.release_gets()
    api.trickle_gets = False


def fetch_in_threads(
    cache: KubeNamespaceCache, name: str, count: int
) -> tuple[list[threading.Thread], list[NamespaceInfo | None]]:
    results: list[NamespaceInfo | None] = []
    threads = [threading.Thread(target=lambda: results.append(cache.fetch(name))) for _ in range(count)]  # fmt: skip
    for thread in threads:
        thread.start()
    return threads, results


def release_when_waiting(
    api: FakeKubeAPI, waiting: list[threading.Thread], others: list[threading.Thread]
) -> None:
    """Once every thread of ``waiting`` waits for its GET, let the server answer; join all."""
    eventually(lambda: all(map(waiting_for_a_future, waiting)), what="every fetch to wait")
    api.release_gets()
    for thread in [*others, *waiting]:
        thread.join(PATIENCE)


def test_fetches_never_take_the_answer_of_a_get_sent_before_they_were_called_and_share_one(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    """A namespace labelled while a GET is under way: callers after the label must see it."""
    cache = make_cache(fetch_timeout=PATIENCE)
    assert cache.wait_ready(PATIENCE)
    api.add("late", {}, emit=False)
    api.hold_get_replies.set()
    first, first_results = fetch_in_threads(cache, "late", 1)
    eventually(lambda: api.held_gets == 1, what="the first GET to have read the namespace")
    # The label lands now; pods created from here on were admitted with it.
    api.modify("late", {"sidecar-injection": "enabled"}, emit=False)
    later, later_results = fetch_in_threads(cache, "late", 5)
    release_when_waiting(api, later, first)
    [before] = first_results
    assert before is not None
    assert dict(before.labels) == {}  # what the server had when that GET read it
    assert len(later_results) == 5
    for result in later_results:
        assert result is not None
        assert dict(result.labels) == {"sidecar-injection": "enabled"}
    assert api.requests["get"] == 2  # the later callers shared one GET, sent after the first


def test_a_fetch_that_waits_for_a_fetch_thread_is_shared_with_later_callers(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    # Not sent yet (every fetch thread is busy), so joining it is safe.
    cache = make_cache(fetch_timeout=PATIENCE, fetch_threads=1)
    assert cache.wait_ready(PATIENCE)
    api.add("queued", {"sidecar-injection": "enabled"}, emit=False)
    api.stall_gets.set()
    busy, _ = fetch_in_threads(cache, "other", 1)
    eventually(lambda: api.requests["get"] == 1, what="the only fetch thread to be busy")
    threads, results = fetch_in_threads(cache, "queued", 4)
    release_when_waiting(api, threads, busy)
    assert [result.name if result else None for result in results] == ["queued"] * 4
    assert api.requests["get"] == 2  # "other", then one for all four


def test_fetches_of_too_many_namespaces_at_once_are_refused_not_queued(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    cache = make_cache(fetch_timeout=PATIENCE, max_fetches_in_flight=2)
    assert cache.wait_ready(PATIENCE)
    api.stall_gets.set()
    threads = [
        threading.Thread(target=lambda n=n: cache.fetch(f"slow-{n}"), daemon=True) for n in range(2)
    ]
    for thread in threads:
        thread.start()
    eventually(lambda: api.requests["get"] == 2, what="two GETs in flight")
    with pytest.raises(NamespaceUnavailable, match="2 other namespaces are being read"):
        cache.fetch("one-more")
    api.release_gets()
    for thread in threads:
        thread.join(PATIENCE)


def test_a_stopped_cache_fails_fetches_instead_of_hanging(
    api: FakeKubeAPI, make_cache: CacheFactory
) -> None:
    cache = make_cache(fetch_timeout=PATIENCE)
    assert cache.wait_ready(PATIENCE)
    api.stall_gets.set()
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            cache.fetch("slow")
        except NamespaceUnavailable as err:
            errors.append(err)

    fetcher = threading.Thread(target=fetch)
    fetcher.start()
    eventually(lambda: api.requests["get"] == 1, what="the GET in flight")
    cache.stop()  # cuts the GET off; the waiting fetch fails at once
    fetcher.join(PATIENCE)
    assert not fetcher.is_alive()
    assert len(errors) == 1
    with pytest.raises(NamespaceUnavailable, match="stopped"):
        cache.fetch("later")
    api.release_gets()
