"""The fake API server's routes and ready-made handlers do what tests will count on.

The Namespace endpoints are exercised by the namespace cache's tests through
the real ``kubernetes`` client; these cover the scripting around them:
routes, the record of calls, held and endless answers, huge pages, the
review endpoints, ``/version``, the namespace lists' endless, padded and slow
modes and slow GETs, unframed bodies, the object store, and the Events API's
writes.
"""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from harness.fake_kube_api import EventStore, FakeKubeAPI, ObjectStore, events, handlers, status
from harness.threads import eventually

NAMESPACES = "/api/v1/namespaces"


def request(
    api: FakeKubeAPI,
    method: str,
    path: str,
    body: Any = None,
    *,
    timeout: float = 30,
    content_type: str = "application/json",
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": content_type}
        connection.request(method, path, body=data, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def get_json(api: FakeKubeAPI, path: str) -> tuple[int, Any]:
    status, body = request(api, "GET", path)
    return status, json.loads(body)


def test_the_first_route_whose_prefix_matches_answers_and_every_call_is_recorded(
    fake_api: FakeKubeAPI,
) -> None:
    fake_api.route("/version", handlers.json_reply({"gitVersion": "v1.37.2"}))
    fake_api.route("/version", handlers.json_reply({"gitVersion": "never"}))
    assert get_json(fake_api, "/version?x=1") == (200, {"gitVersion": "v1.37.2"})
    assert get_json(fake_api, "/apis/nothing")[0] == 404
    assert [(c.method, c.path, c.query) for c in fake_api.calls] == [
        ("GET", "/version", {"x": "1"}),
        ("GET", "/apis/nothing", {}),
    ]


def test_a_route_comes_before_the_built_in_namespaces(fake_api: FakeKubeAPI) -> None:
    fake_api.add("demo")
    fake_api.route("/api/v1/namespaces/demo", handlers.status_reply(403, "Forbidden", "no"))
    assert get_json(fake_api, "/api/v1/namespaces/demo") == (
        403,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "no",
            "reason": "Forbidden",
            "code": 403,
        },
    )
    assert get_json(fake_api, "/api/v1/namespaces")[1]["items"][0]["metadata"]["name"] == "demo"


def test_a_held_answer_comes_only_after_the_release(fake_api: FakeKubeAPI) -> None:
    fake_api.route("/version", handlers.held(handlers.json_reply({"gitVersion": "late"})))
    answers: list[tuple[int, Any]] = []
    caller = threading.Thread(target=lambda: answers.append(get_json(fake_api, "/version")))
    caller.start()
    fake_api.wait_for_calls("/version", 1)
    assert caller.is_alive()
    assert answers == []
    fake_api.release()
    caller.join(30)
    assert answers == [(200, {"gitVersion": "late"})]


def test_a_hanging_route_is_cut_when_the_server_stops(fake_api: FakeKubeAPI) -> None:
    fake_api.route("/version", handlers.hang())
    failures: list[BaseException] = []

    def call() -> None:
        try:
            request(fake_api, "GET", "/version")
        except (OSError, http.client.HTTPException) as error:
            failures.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    fake_api.wait_for_calls("/version", 1)
    fake_api.stop()
    caller.join(30)
    assert not caller.is_alive()
    assert len(failures) == 1


def test_a_trickle_sends_a_byte_at_a_time_until_released(fake_api: FakeKubeAPI) -> None:
    fake_api.route("/version", handlers.trickle(interval=0.01))
    connection = http.client.HTTPConnection("127.0.0.1", fake_api.port, timeout=30)
    connection.request("GET", "/version")
    answer = connection.getresponse()
    assert answer.getheader("Content-Length") == "1000000"
    assert answer.read(3) == b"{  "
    fake_api.release()
    with pytest.raises(http.client.IncompleteRead):
        answer.read()
    connection.close()


def test_a_huge_page_is_a_valid_list_of_at_least_the_size_asked(fake_api: FakeKubeAPI) -> None:
    size = 7 * 1024 * 1024
    fake_api.route("/api/v1/pods", handlers.huge_page(size, kind="PodList"))
    status, body = request(fake_api, "GET", "/api/v1/pods?limit=250")
    assert status == 200
    assert len(body) >= size
    document = json.loads(body)
    assert document["kind"] == "PodList"
    assert len(document["items"]) > 1000


def test_endless_pages_always_promise_another_one(fake_api: FakeKubeAPI) -> None:
    fake_api.route(
        "/api/v1/pods", handlers.endless_pages(lambda n: {"metadata": {"name": f"p{n}"}})
    )
    names, token = [], ""
    for _ in range(5):
        page = get_json(fake_api, f"/api/v1/pods?limit=1&continue={token}")[1]
        names += [item["metadata"]["name"] for item in page["items"]]
        token = page["metadata"]["continue"]
        assert token
    assert names == ["p0", "p1", "p2", "p3", "p4"]
    assert len(fake_api.calls_to("/api/v1/pods")) == 5


def test_pages_follow_their_continue_tokens_to_the_last(fake_api: FakeKubeAPI) -> None:
    fake_api.route("/api/v1/pods", handlers.pages({"items": [{"a": 1}]}, {"items": [{"b": 2}]}))
    first = get_json(fake_api, "/api/v1/pods")[1]
    second = get_json(fake_api, f"/api/v1/pods?continue={first['metadata']['continue']}")[1]
    assert (first["items"], second["items"]) == ([{"a": 1}], [{"b": 2}])
    assert "continue" not in second["metadata"]


def test_a_token_review_authenticates_known_tokens_only(fake_api: FakeKubeAPI) -> None:
    fake_api.route(handlers.TOKEN_REVIEWS, handlers.token_review({"good": "alice"}, groups=["g"]))
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}
    status, body = request(
        fake_api, "POST", handlers.TOKEN_REVIEWS, {**review, "spec": {"token": "good"}}
    )
    assert status == 201
    assert json.loads(body)["status"] == {
        "authenticated": True,
        "user": {"username": "alice", "groups": ["g"]},
    }
    _, body = request(fake_api, "POST", handlers.TOKEN_REVIEWS, {**review, "spec": {"token": "x"}})
    assert json.loads(body)["status"]["authenticated"] is False
    assert [c.body["spec"]["token"] for c in fake_api.calls_to(handlers.TOKEN_REVIEWS)] == [
        "good",
        "x",
    ]


def test_a_subject_access_review_answers_as_the_test_decides(fake_api: FakeKubeAPI) -> None:
    fake_api.route(
        handlers.SUBJECT_ACCESS_REVIEWS,
        handlers.subject_access_review(lambda spec: spec.get("user") == "alice"),
    )
    allowed = [
        json.loads(
            request(fake_api, "POST", handlers.SUBJECT_ACCESS_REVIEWS, {"spec": {"user": user}})[1]
        )["status"]["allowed"]
        for user in ("alice", "bob")
    ]
    assert allowed == [True, False]


def test_the_kubeconfig_it_writes_reaches_it_with_its_token(
    fake_api: FakeKubeAPI, tmp_path: Path
) -> None:
    fake_api.add("demo", {"sidecar-injection": "enabled"})
    kubeconfig = fake_api.write_kubeconfig(tmp_path / "kubeconfig", token="abc")
    api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
    try:
        names = [ns.metadata.name for ns in api.list_namespace().items]
    finally:
        api.api_client.close()
    assert names == ["demo"]
    eventually(lambda: fake_api.authorizations == {"Bearer abc"}, what="the token")
    (context,) = json.loads(kubeconfig.read_text())["contexts"]
    assert "namespace" not in context["context"]
    with_namespace = fake_api.write_kubeconfig(tmp_path / "shop", namespace="shop")
    (context,) = json.loads(with_namespace.read_text())["contexts"]
    assert context["context"]["namespace"] == "shop"


def test_version_is_built_in_and_can_be_changed_or_taken_away(fake_api: FakeKubeAPI) -> None:
    assert get_json(fake_api, "/version") == (
        200,
        {"major": "1", "minor": "33", "gitVersion": "v1.33.0"},
    )
    fake_api.version = "v1.37.2-extra"
    assert get_json(fake_api, "/version")[1]["gitVersion"] == "v1.37.2-extra"
    fake_api.version = None
    assert get_json(fake_api, "/version")[0] == 404


def test_endless_namespace_lists_promise_another_page_once_the_namespaces_run_out(
    fake_api: FakeKubeAPI,
) -> None:
    fake_api.add("a")
    fake_api.add("b")
    fake_api.endless_lists = True
    names, token = [], ""
    for _ in range(5):
        page = get_json(fake_api, f"/api/v1/namespaces?limit=1&continue={token}")[1]
        names += [item["metadata"]["name"] for item in page["items"]]
        token = page["metadata"]["continue"]
        assert token
    assert names == ["a", "b"]
    assert fake_api.requests["list"] == 5


def test_padded_namespace_lists_carry_about_that_many_bytes_of_namespaces_named_apart(
    fake_api: FakeKubeAPI,
) -> None:
    fake_api.add("shop")
    fake_api.list_padding = 100_000
    pages = [request(fake_api, "GET", "/api/v1/namespaces")[1] for _ in range(2)]
    assert all(90_000 < len(body) < 110_000 for body in pages)
    names = [[i["metadata"]["name"] for i in json.loads(body)["items"]] for body in pages]
    assert names[0][0] == names[1][0] == "shop"
    assert len(set(names[0] + names[1])) == len(names[0]) + len(names[1]) - 1 > 20


def test_a_slow_namespace_list_answers_after_its_delay_or_the_release(
    fake_api: FakeKubeAPI,
) -> None:
    fake_api.add("shop")
    fake_api.list_delay = 60
    answers: list[tuple[int, Any]] = []
    caller = threading.Thread(target=lambda: answers.append(get_json(fake_api, NAMESPACES)))
    caller.start()
    fake_api.wait_for_calls(NAMESPACES, 1)
    assert caller.is_alive()
    assert answers == []
    fake_api.release()
    caller.join(30)
    assert [(code, [i["metadata"]["name"] for i in body["items"]]) for code, body in answers] == [
        (200, ["shop"])
    ]


def test_slow_namespace_gets_answer_after_the_release_counted_by_name_and_at_once(
    fake_api: FakeKubeAPI,
) -> None:
    fake_api.add("shop")
    fake_api.get_delay = 60
    answers: list[int] = []
    callers = [
        threading.Thread(target=lambda n=name: answers.append(get_json(fake_api, n)[0]))
        for name in (f"{NAMESPACES}/shop", f"{NAMESPACES}/nowhere")
    ]
    for caller in callers:
        caller.start()
    eventually(lambda: fake_api.gets_at_once == 2, what="both GETs under way")
    assert answers == []
    fake_api.release()
    for caller in callers:
        caller.join(30)
    assert sorted(answers) == [200, 404]
    assert sorted(fake_api.get_names) == ["nowhere", "shop"]
    assert fake_api.max_gets_at_once == 2
    eventually(lambda: fake_api.gets_at_once == 0, what="both GETs done")
    assert get_json(fake_api, f"{NAMESPACES}/shop")[0] == 200  # released: no wait any more


def test_an_unframed_body_streams_until_the_connection_closes(fake_api: FakeKubeAPI) -> None:
    fake_api.route("/api/v1/pods", handlers.unframed(300_000, chunk=4096))
    connection = http.client.HTTPConnection("127.0.0.1", fake_api.port, timeout=30)
    connection.request("GET", "/api/v1/pods")
    answer = connection.getresponse()
    assert answer.getheader("Content-Length") is None
    assert answer.getheader("Transfer-Encoding") is None
    assert answer.read() == b" " * 300_000
    connection.close()


def test_an_object_store_serves_objects_lists_by_label_errors_and_creates(
    fake_api: FakeKubeAPI,
) -> None:
    store = ObjectStore()
    fake_api.route("/", store)
    apps = "/apis/apps/v1/namespaces"
    for namespace, name, app in (
        ("shop", "web", "web"),
        ("shop", "db", "db"),
        ("cart", "web", "web"),
    ):
        store.objects[f"{apps}/{namespace}/deployments/{name}"] = {
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}}
        }
    assert get_json(fake_api, f"{apps}/shop/deployments/db")[1]["metadata"]["name"] == "db"
    missing = get_json(fake_api, f"{apps}/shop/deployments/gone")
    assert (missing[0], missing[1]["reason"]) == (404, "NotFound")
    assert get_json(fake_api, "/version")[0] == 404  # the store answers every path it is routed
    # A namespace's collection, and the cluster-wide one, in pages and by label.
    first = get_json(fake_api, f"{apps}/shop/deployments?limit=1")[1]
    second = get_json(fake_api, f"{apps}/shop/deployments?limit=1&continue=1")[1]
    assert [o["metadata"]["name"] for o in first["items"] + second["items"]] == ["db", "web"]
    assert "continue" not in second["metadata"]
    everywhere = get_json(fake_api, "/apis/apps/v1/deployments?labelSelector=app%3Dweb")[1]
    assert [o["metadata"]["namespace"] for o in everywhere["items"]] == ["cart", "shop"]
    store.errors[f"{apps}/shop/deployments"] = 403
    assert get_json(fake_api, f"{apps}/shop/deployments") == (
        403,
        status(403, "Forbidden", f"{apps}/shop/deployments says no"),
    )
    store.errors[f"{apps}/shop/deployments/web"] = (403, 'deployments.apps "web" is forbidden')
    assert get_json(fake_api, f"{apps}/shop/deployments/web") == (
        403,
        status(403, "Forbidden", 'deployments.apps "web" is forbidden'),
    )
    pod = {"metadata": {"generateName": "probe-"}}
    assert request(fake_api, "POST", "/api/v1/namespaces/shop/pods?dryRun=All", pod) == (
        201,
        json.dumps(pod).encode(),
    )
    store.dry_run = lambda namespace, _body: (400, status(400, "BadRequest", f"not in {namespace}"))
    refused = request(fake_api, "POST", "/api/v1/namespaces/shop/pods", pod)
    assert (refused[0], json.loads(refused[1])["message"]) == (400, "not in shop")
    assert [c.body for c in fake_api.calls if c.method == "POST"] == [pod, pod]


# --- the Events API's writes ------------------------------------------------------------

SHOP_EVENTS = "/apis/events.k8s.io/v1/namespaces/shop/events"
EVENT = {"metadata": {"name": "web.17a", "namespace": "shop"}, "reason": "Injected"}


@pytest.fixture
def event_store(fake_api: FakeKubeAPI) -> EventStore:
    store = EventStore()
    fake_api.route(events.PREFIX, store)
    return store


def test_an_event_store_keeps_creates_and_merges_merge_patches_into_them(
    fake_api: FakeKubeAPI, event_store: EventStore
) -> None:
    assert request(fake_api, "POST", SHOP_EVENTS, EVENT) == (201, json.dumps(EVENT).encode())
    taken = request(fake_api, "POST", SHOP_EVENTS, EVENT)
    assert (taken[0], json.loads(taken[1])["reason"]) == (409, "AlreadyExists")
    series = {"series": {"count": 3, "lastObservedTime": "2025-01-01T00:00:00.000000Z"}}
    merged = request(
        fake_api, "PATCH", f"{SHOP_EVENTS}/web.17a", series, content_type=events.MERGE_PATCH
    )
    assert (merged[0], json.loads(merged[1])) == (200, {**EVENT, **series})
    removed = request(
        fake_api,
        "PATCH",
        f"{SHOP_EVENTS}/web.17a",
        {"reason": None, "series": {"count": 4}},
        content_type=events.MERGE_PATCH,
    )
    assert json.loads(removed[1]) == {
        "metadata": EVENT["metadata"],
        "series": {"count": 4, "lastObservedTime": "2025-01-01T00:00:00.000000Z"},
    }
    assert event_store.events == {("shop", "web.17a"): json.loads(removed[1])}
    assert event_store.series_counts() == [4]
    gone = request(fake_api, "PATCH", f"{SHOP_EVENTS}/gone", {}, content_type=events.MERGE_PATCH)
    assert (gone[0], json.loads(gone[1])["reason"]) == (404, "NotFound")
    # Only merge patches are applied; anything but a create or a patch is not an Event write.
    json_patch = request(fake_api, "PATCH", f"{SHOP_EVENTS}/web.17a", [], content_type="x")
    assert json_patch[0] == 415
    assert request(fake_api, "GET", f"{SHOP_EVENTS}/web.17a")[0] == 405
    assert request(fake_api, "POST", f"{SHOP_EVENTS}/web.17a", EVENT)[0] == 405
    assert [(c.method, c.content_type) for c in fake_api.calls_to(events.PREFIX)][:4] == [
        ("POST", "application/json"),
        ("POST", "application/json"),
        ("PATCH", events.MERGE_PATCH),
        ("PATCH", events.MERGE_PATCH),
    ]


def test_an_event_store_told_to_refuse_answers_every_write_with_that_status(
    fake_api: FakeKubeAPI, event_store: EventStore
) -> None:
    event_store.refuse(403, "events are refused here")
    code, body = request(fake_api, "POST", SHOP_EVENTS, EVENT)
    assert (code, json.loads(body)) == (403, status(403, "Forbidden", "events are refused here"))
    patch = request(fake_api, "PATCH", f"{SHOP_EVENTS}/x", {}, content_type=events.MERGE_PATCH)
    assert patch[0] == 403
    assert event_store.events == {}


def test_an_event_store_holds_writes_until_released_then_answers_them_as_ever(
    fake_api: FakeKubeAPI, event_store: EventStore
) -> None:
    event_store.hold = True
    answers: list[int] = []
    caller = threading.Thread(
        target=lambda: answers.append(request(fake_api, "POST", SHOP_EVENTS, EVENT)[0])
    )
    caller.start()
    eventually(lambda: event_store.held == 1, what="the write to be held")
    assert caller.is_alive()
    assert (answers, event_store.events) == ([], {})
    fake_api.release()
    caller.join(30)
    assert answers == [201]
    assert event_store.held == 0
    assert list(event_store.events) == [("shop", "web.17a")]


def test_a_held_event_write_is_cut_unanswered_when_the_server_stops(
    fake_api: FakeKubeAPI, event_store: EventStore
) -> None:
    event_store.hold = True
    failures: list[BaseException] = []

    def call() -> None:
        try:
            request(fake_api, "POST", SHOP_EVENTS, EVENT)
        except (OSError, http.client.HTTPException) as error:
            failures.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    eventually(lambda: event_store.held == 1, what="the write to be held")
    fake_api.stop()
    caller.join(30)
    assert not caller.is_alive()
    assert len(failures) == 1
    eventually(lambda: event_store.held == 0, what="the held write to end")
    assert event_store.events == {}
