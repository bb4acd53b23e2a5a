"""``/preview`` with a ``PreviewAccess``: who is asked what, and when, through the app itself.

The app is driven as the server drives it (raw ASGI), so the tests see
whether the body was read at all: the token and the ``namespace=`` query are
decided before it, the namespaces only the body names right after parsing
and before any namespace is read (the source records every lookup). The
deciding itself is ``ClusterAccess`` over a scripted reviewer
(``access_fakes``), or a fake ``PreviewAccess`` where only the route's part
is at stake.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson

from tests.builders import ENABLED, pod, review
from tests.unit.access_fakes import FakeReviewer
from tests.unit.access_fakes import scope as access_scope
from webhook.cluster.namespaces_file import NamespaceInfo, StaticNamespaces
from webhook.contract.access import UserInfo
from webhook.engine.config import InjectorConfig
from webhook.service.answers import HTTPError
from webhook.service.app import create_app
from webhook.service.limits import Limits
from webhook.service.metrics import Metrics
from webhook.service.preview_access import (
    AccessOptions,
    Caller,
    ClusterAccess,
    PreviewAccess,
    ReviewBudget,
)


class RecordingSource(StaticNamespaces):
    """Every namespace exists and is opted in; every lookup, from memory or not, is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.looked_up: list[str] = []

    def cached(self, name: str) -> NamespaceInfo | None:
        self.looked_up.append(name)
        return NamespaceInfo(name, ENABLED)

    def fetch(self, name: str) -> NamespaceInfo | None:
        self.looked_up.append(name)
        return NamespaceInfo(name, ENABLED)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    body_reads: int

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class App:
    source: RecordingSource = field(default_factory=RecordingSource)
    reviewer: FakeReviewer = field(default_factory=FakeReviewer)
    access: PreviewAccess | None = None
    limits: Limits = field(default_factory=Limits)
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        if self.access is None:
            self.access = ClusterAccess(self.reviewer, AccessOptions())
        self.app = create_app(
            config=InjectorConfig(),
            namespaces=self.source,
            limits=self.limits,
            metrics=self.metrics,
            preview_access=self.access,
        )

    def post(
        self,
        body: Any,
        *,
        query: str = "",
        token: str | None = "alice-token",  # noqa: S107 - the fake reviewer's user
    ) -> Reply:
        request = access_scope(token)
        request["query_string"] = query.encode()
        request["headers"].append((b"content-length", str(len(raw := _bytes(body))).encode()))
        request |= {"http_version": "1.1", "scheme": "https", "root_path": "", "raw_path": b""}
        request["server"] = ("127.0.0.1", 8443)
        reads = 0
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            nonlocal reads
            reads += 1
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        anyio.run(self.app, request, receive, send)
        start = sent[0]
        body_bytes = b"".join(m.get("body", b"") for m in sent[1:])
        headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return Reply(start["status"], headers, body_bytes, reads)

    def outcomes(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for metric in self.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name == "sidecar_injector_requests_total":
                    found[sample.labels["outcome"]] = sample.value
        return found


def _bytes(body: Any) -> bytes:
    return body if isinstance(body, bytes) else orjson.dumps(body)


def pods(*namespaces: str | None) -> dict[str, Any]:
    items = []
    for index, name in enumerate(namespaces):
        extra = {} if name is None else {"namespace": name}
        items.append(pod(f"web-{index}", **extra))
    return {"apiVersion": "v1", "kind": "List", "items": items}


def alice_may_get(*namespaces: str) -> FakeReviewer:
    return FakeReviewer(allowed={("alice", name) for name in namespaces})


# --- before the body -------------------------------------------------------------------


def test_without_a_token_the_answer_is_a_401_before_the_body_is_read() -> None:
    app = App()
    reply = app.post(pods("demo"), query="namespace=demo", token=None)
    assert reply.status == 401
    assert reply.body_reads == 0
    assert reply.json()["error"].startswith("this preview reads the cluster's namespaces")
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert reply.headers["connection"] == "close"
    assert app.source.looked_up == []
    assert app.reviewer.token_reviews == []
    assert app.outcomes() == {"unauthorized": 1.0}


def test_a_rejected_token_is_a_401_even_for_a_request_that_is_bad_otherwise() -> None:
    app = App()
    reply = app.post(b"", query="nonsense=1", token="not-a-user")
    assert reply.status == 401
    assert reply.json() == {
        "error": "the API server did not accept the bearer token: send Authorization: Bearer"
        " TOKEN, e.g. TOKEN=$(kubectl create token NAME)"
    }
    assert reply.body_reads == 0


def test_a_query_namespace_the_caller_may_not_get_is_a_403_before_the_body_is_read() -> None:
    app = App(reviewer=alice_may_get("demo"))
    reply = app.post(pods(None), query="namespace=payments")
    assert reply.status == 403
    assert reply.json() == {
        "error": "user 'alice' may not get namespace 'payments', which this preview reads"
    }
    assert reply.body_reads == 0
    assert reply.headers["connection"] == "close"  # the unread body is not drained
    assert app.source.looked_up == []
    assert app.outcomes() == {"forbidden": 1.0}


def test_a_malformed_query_from_an_authenticated_caller_is_still_a_400() -> None:
    app = App()
    reply = app.post(pods(None), query="namespace=Not_A_Name")
    assert reply.status == 400
    assert app.reviewer.access_reviews == []


# --- after parsing, before any read -------------------------------------------------------


def test_namespaces_only_the_body_names_are_authorized_before_any_namespace_is_read() -> None:
    app = App(reviewer=alice_may_get("shop"))
    reply = app.post(pods("shop", "payments", "shop"))
    assert reply.status == 403
    assert "namespace 'payments'" in reply.json()["error"]
    assert reply.body_reads == 1
    # Not even the allowed one was looked up.
    assert app.source.looked_up == []
    assert [name for _, name in app.reviewer.access_reviews] == ["shop", "payments"]


def test_a_caller_allowed_every_namespace_gets_the_preview_with_one_review_each() -> None:
    app = App(reviewer=alice_may_get("shop", "payments"))
    reply = app.post(pods("shop", "payments", "shop"))
    assert reply.status == 200, reply.body
    assert [result["injected"] for result in reply.json()] == [True, True, True]
    assert app.reviewer.token_reviews == ["alice-token"]
    assert [name for _, name in app.reviewer.access_reviews] == ["shop", "payments"]
    assert app.source.looked_up == ["shop", "payments"]


def test_objects_without_a_namespace_are_previewed_in_default_which_is_authorized() -> None:
    app = App(reviewer=alice_may_get())
    reply = app.post(pods(None))
    assert reply.status == 403
    assert "namespace 'default'" in reply.json()["error"]


def test_an_admission_reviews_own_namespace_is_authorized_as_well_as_the_querys() -> None:
    app = App(reviewer=alice_may_get("demo", "shop"))
    body = review(pod("web"), namespace="shop")
    assert app.post(body, query="namespace=demo").status == 200
    assert [name for _, name in app.reviewer.access_reviews] == ["demo", "shop"]
    assert app.source.looked_up == ["shop"]

    denied = App(reviewer=alice_may_get("demo"))
    reply = denied.post(body, query="namespace=demo")
    assert reply.status == 403
    assert "namespace 'shop'" in reply.json()["error"]
    assert denied.source.looked_up == []


def test_only_the_namespaces_the_preview_would_read_are_authorized() -> None:
    # The second object's namespace differs from the query's: the preview
    # stops there with a 400 before reading it, so it is not asked about.
    app = App(reviewer=alice_may_get("demo"))
    reply = app.post(pods("demo", "elsewhere"), query="namespace=demo")
    assert reply.status == 400
    assert "does not match the requested 'demo'" in reply.json()["error"]
    assert [name for _, name in app.reviewer.access_reviews] == ["demo"]


# --- the budget, and no access at all ------------------------------------------------------


@dataclass
class SlowAccess:
    """A PreviewAccess that lets everyone in, pretending its reviews took ``spent`` seconds."""

    spent: float
    authorized: list[list[str]] = field(default_factory=list)

    async def authenticate(self, scope: Any) -> Caller:  # noqa: ARG002 - the interface's
        budget = ReviewBudget(10.0, spent=self.spent)
        return Caller(UserInfo("anyone"), b"key", "10.0.0.1", budget)

    async def authorize(self, caller: Caller, namespaces: Iterable[str]) -> None:  # noqa: ARG002
        self.authorized.append(list(namespaces))

    def close(self) -> None:
        pass


def test_time_spent_on_reviews_comes_off_the_previews_namespace_reads() -> None:
    class Uncached(RecordingSource):
        def cached(self, name: str) -> NamespaceInfo | None:  # noqa: ARG002 - never cached
            return None

    slow = App(source=Uncached(), access=SlowAccess(3.0), limits=Limits(preview_lookup_seconds=3.0))
    reply = slow.post(pod("web", namespace="shop"))
    assert reply.status == 200
    result = reply.json()
    assert result["injected"] is False
    assert any("for namespace reads are spent" in w for w in result["warnings"])
    assert slow.source.looked_up == []

    quick = App(
        source=Uncached(), access=SlowAccess(0.0), limits=Limits(preview_lookup_seconds=3.0)
    )
    assert quick.post(pod("web", namespace="shop")).json()["injected"] is True
    assert quick.source.looked_up == ["shop"]


def test_the_route_asks_the_access_it_is_given_for_the_body_namespaces_after_the_query() -> None:
    access = SlowAccess(0.0)
    app = App(access=access)
    assert app.post(pods("shop", None), query="").status == 200
    assert access.authorized == [["shop", "default"]]
    access.authorized.clear()
    assert app.post(pods(None), query="namespace=demo").status == 200
    assert access.authorized == [["demo"], ["demo"]]


def test_without_an_access_the_preview_is_open_as_with_a_namespaces_file() -> None:
    source = RecordingSource()
    app = create_app(config=InjectorConfig(), namespaces=source)
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        answer = client.post(
            "/preview?namespace=demo",
            content=orjson.dumps(pod("web")),
            headers={"Content-Type": "application/json"},
        )
    assert answer.status_code == 200
    assert source.looked_up == ["demo"]


def test_an_http_error_from_the_access_is_answered_as_it_says() -> None:
    class Refusing(SlowAccess):
        async def authenticate(self, scope: Any) -> Caller:  # noqa: ARG002 - refuses all
            raise HTTPError(429, "throttled", "slow down", headers={"Retry-After": "1"})

    app = App(access=Refusing(0.0))
    reply = app.post(pods("demo"))
    assert (reply.status, reply.headers["retry-after"]) == (429, "1")
    assert reply.json() == {"error": "slow down"}
    assert app.outcomes() == {"throttled": 1.0}
