"""``/preview`` of a real ``serve`` whose namespaces come from an API server: trusted callers only.

One ``serve --kubeconfig`` (at ``--log-level debug``, so that every line it
could log is there to search) against the fake API server, which holds the
namespaces and answers TokenReviews and SubjectAccessReviews from two
tables: tokens to users, and which user may get which namespace. Each test
uses tokens of its own, since answers are remembered for a few seconds. A
TokenReview handler can be swapped per test for a slow, huge, endless or
absent answer. No wall time is measured: a held review is bounded by the
server's own budget, and the tests wait on answers and on the fake's calls.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from harness.fake_kube_api import FakeKubeAPI, Handler, Request, handlers
from harness.server import Server, WebhookClient, running_server
from harness.tls_client import connect
from tests.builders import ENABLED, pod

ALLOWED = {("alice", "demo"), ("alice", "unreadable")}
# Tokens -> users; tests add theirs (the table is read at each review).
USERS: dict[str, str] = {}


class Switch:
    """A route whose handler a test may replace; the tables' answer otherwise."""

    def __init__(self, usual: Handler) -> None:
        self.usual = usual
        self.handler = usual

    def __call__(self, request: Request, path: str, query: dict[str, str]) -> None:
        self.handler(request, path, query)


TOKEN_REVIEW = Switch(handlers.token_review(USERS))


@pytest.fixture(scope="module")
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as fake:
        fake.add("demo", dict(ENABLED))
        fake.add("payments", dict(ENABLED))
        fake.route(handlers.TOKEN_REVIEWS, TOKEN_REVIEW)
        fake.route(
            handlers.SUBJECT_ACCESS_REVIEWS,
            handlers.subject_access_review(
                lambda spec: (spec["user"], spec["resourceAttributes"]["namespace"]) in ALLOWED
            ),
        )
        fake.route(
            "/api/v1/namespaces/unreadable",
            handlers.status_reply(500, "InternalError", "etcdserver: request timed out"),
        )
        yield fake


@pytest.fixture(scope="module")
def server(api: FakeKubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("serve-auth")
    kubeconfig = api.write_kubeconfig(workdir / "kubeconfig", token="injector-token")
    args = ["--kubeconfig", str(kubeconfig), "--log-level", "debug", "--read-timeout", "120"]
    with running_server(workdir, args=args) as running:
        yield running


@pytest.fixture(autouse=True)
def _usual_token_reviews() -> Iterator[None]:
    yield
    TOKEN_REVIEW.handler = TOKEN_REVIEW.usual


def token_of(user: str) -> str:
    """A fresh token that authenticates as ``user``."""
    token = f"{user}-token-{uuid.uuid4().hex}"
    USERS[token] = user
    return token


def preview(
    client: WebhookClient,
    token: str | None,
    *,
    namespace: str | None = "demo",
    body: Any = None,
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    params = {} if namespace is None else {"namespace": namespace}
    content = orjson.dumps(pod("web") if body is None else body)
    return client.request("POST", "/preview", content=content, headers=headers, params=params)


def reviews_of(api: FakeKubeAPI, token: str) -> int:
    calls = api.calls_to(handlers.TOKEN_REVIEWS)
    return sum(1 for call in calls if isinstance(call.body, dict) and token in str(call.body))


# --- who gets an answer --------------------------------------------------------------------


def test_a_caller_the_cluster_trusts_previews_a_namespace_they_may_get(server: Server) -> None:
    answer = preview(server.client(), token_of("alice"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["injected"] is True
    assert "namespace demo is labelled sidecar-injection=enabled" in answer.json()["reason"]


def test_without_a_token_the_answer_is_a_401_before_the_body_is_sent(server: Server) -> None:
    # Headers announcing a body that never comes: the server has two minutes
    # to wait for it (--read-timeout 120) and answers at once instead.
    with connect(server.port, server.ca_file, timeout=60) as sock:
        sock.sendall(
            b"POST /preview?namespace=demo HTTP/1.1\r\nHost: injector\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        received = b""
        while chunk := sock.recv(65536):  # the server closes after answering
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ")
    assert b"www-authenticate: Bearer" in head.lower().replace(b"bearer", b"Bearer")
    assert body.count(b"\n") == 0
    assert orjson.loads(body)["error"].startswith("this preview reads the cluster's namespaces")


def test_a_token_the_api_server_rejects_is_a_401_and_no_answer_or_log_line_carries_it(
    server: Server, api: FakeKubeAPI
) -> None:
    canary = f"leak-canary-{uuid.uuid4().hex}"
    client = server.client()
    answer = preview(client, canary)
    assert answer.status_code == 401
    assert answer.json()["error"].startswith("the API server did not accept the bearer token")
    assert reviews_of(api, canary) == 1
    accepted = token_of("alice")
    assert preview(client, accepted).status_code == 200
    for token in (canary, accepted):
        assert token not in answer.text
        assert token not in str(answer.headers)
        assert token not in server.log()
    samples = server.metrics()
    assert (
        samples['sidecar_injector_requests_total{endpoint="preview",outcome="unauthorized"}'] >= 1
    )


def test_a_namespace_the_user_may_not_get_is_a_403_naming_it(server: Server) -> None:
    answer = preview(server.client(), token_of("alice"), namespace="payments")
    assert answer.status_code == 403
    assert answer.json() == {
        "error": "user 'alice' may not get namespace 'payments', which this preview reads"
    }


def test_namespaces_only_the_body_names_are_authorized_before_any_is_read(
    server: Server, api: FakeKubeAPI
) -> None:
    gets = api.requests["get"]
    body = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [pod("a", namespace="demo"), pod("b", namespace="payments")],
    }
    answer = preview(server.client(), token_of("alice"), namespace=None, body=body)
    assert answer.status_code == 403
    assert "namespace 'payments'" in answer.json()["error"]
    assert api.requests["get"] == gets


def test_answers_are_remembered_so_a_burst_of_previews_costs_one_review_each(
    server: Server, api: FakeKubeAPI
) -> None:
    token, client = token_of("alice"), server.client()
    before = len(api.calls_to(handlers.SUBJECT_ACCESS_REVIEWS))
    statuses = [preview(client, token).status_code for _ in range(3)]
    statuses += [preview(client, token, namespace="payments").status_code for _ in range(2)]
    assert statuses == [200, 200, 200, 403, 403]
    assert reviews_of(api, token) == 1
    assert len(api.calls_to(handlers.SUBJECT_ACCESS_REVIEWS)) == before + 2


def test_a_namespace_the_api_server_cannot_read_is_previewed_with_a_warning(
    server: Server,
) -> None:
    answer = preview(server.client(), token_of("alice"), namespace="unreadable")
    assert answer.status_code == 200
    assert "namespace unreadable could not be read" in answer.headers["warning"]


# --- bounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "says"),
    [
        pytest.param(handlers.hang(), "the TokenReview", id="slow"),
        pytest.param(handlers.huge_page(8 * 1024 * 1024), "65536-byte limit", id="huge"),
        pytest.param(
            handlers.endless_chunks(interval=0, chunk=b" " * 4096), "65536-byte limit", id="flood"
        ),
        pytest.param(handlers.endless_chunks(interval=0.05), "the TokenReview", id="endless"),
        pytest.param(
            handlers.status_reply(403, "Forbidden", "tokenreviews is forbidden"),
            "the API server answered the TokenReview with HTTP 403: tokenreviews is forbidden",
            id="forbidden",
        ),
    ],
)
def test_a_slow_huge_endless_or_refused_token_review_is_a_one_line_503(
    server: Server, handler: Handler, says: str
) -> None:
    TOKEN_REVIEW.handler = handler
    client = server.client()
    answer = preview(client, token_of("alice"))
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    message = answer.json()["error"]
    assert message.startswith("cannot check access now: ")
    assert says in message
    assert "\n" not in message
    assert server.client().get("/healthz").status_code == 200


def test_reviews_in_flight_are_bounded_per_address(server: Server, api: FakeKubeAPI) -> None:
    TOKEN_REVIEW.handler = handlers.hang()
    held_before = len(api.calls_to(handlers.TOKEN_REVIEWS))
    late = server.client()
    assert late.get("/healthz").status_code == 200  # connected before the flood
    clients = [server.client() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        held = [pool.submit(preview, c, token_of("alice")) for c in clients]
        api.wait_for_calls(handlers.TOKEN_REVIEWS, held_before + 4)
        turned_away = preview(late, token_of("alice"))
        assert turned_away.status_code == 429
        assert turned_away.headers["retry-after"] == "1"
        assert "access reviews for 127.0.0.1 are under way" in turned_away.json()["error"]
        # The held ones end within the reviews' budget, as 503s.
        assert [f.result().status_code for f in held] == [503] * 4
    assert len(api.calls_to(handlers.TOKEN_REVIEWS)) == held_before + 4


def test_an_authorization_header_past_the_header_limit_costs_no_review(
    server: Server, api: FakeKubeAPI
) -> None:
    before = len(api.calls_to(handlers.TOKEN_REVIEWS))
    answer = preview(server.client(), "x" * 20_000)
    assert answer.status_code == 431
    assert len(api.calls_to(handlers.TOKEN_REVIEWS)) == before


# --- an API server that is gone --------------------------------------------------------------


def test_with_the_api_server_gone_a_preview_is_a_503_until_it_is_back(
    tmp_path: Path, fake_api: FakeKubeAPI
) -> None:
    users = {"alice-token": "alice"}
    fake_api.add("demo", dict(ENABLED))
    fake_api.route(handlers.TOKEN_REVIEWS, handlers.token_review(users))
    fake_api.route(handlers.SUBJECT_ACCESS_REVIEWS, handlers.subject_access_review(True))
    config = fake_api.write_kubeconfig(tmp_path / "kubeconfig")
    with running_server(tmp_path, args=["--kubeconfig", str(config)]) as server:
        client = server.client()
        fake_api.stop()
        answer = preview(client, "alice-token")
        assert answer.status_code == 503
        assert answer.json()["error"].startswith("cannot check access now: the TokenReview failed")
        fake_api.restart()
        end = time.monotonic() + 30
        while preview(client, "alice-token").status_code != 200:
            assert time.monotonic() < end, "previews did not come back with the API server"
            time.sleep(0.05)
