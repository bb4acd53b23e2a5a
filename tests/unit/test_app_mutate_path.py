"""``POST /mutate`` bypasses FastAPI's layers, yet answers as a FastAPI route would.

The fast path (``webhook.service.app._WebhookApp``) is an optimisation: nothing a
client sees may depend on it. In-process, so both paths can be compared on
the same app: ``/mutate`` taken before FastAPI, and ``/mutate`` sent through
FastAPI's own middleware and router (the app called as a plain FastAPI app),
must give byte-identical answers; other methods get the 405 any FastAPI route
gives, ``/mutate/`` a 404 (never a redirect), and the app stays a FastAPI app.
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from tests.builders import enabled_namespace, review_bytes
from webhook.cluster.namespaces_file import StaticNamespaces
from webhook.engine.config import InjectorConfig
from webhook.service.app import create_app


@pytest.fixture(scope="module")
def client() -> TestClient:
    source = StaticNamespaces({"demo": enabled_namespace()})
    return TestClient(create_app(config=InjectorConfig(), namespaces=source))


class _ThroughFastAPI:
    """The same app, called as FastAPI would be: middleware, router, then the route."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await FastAPI.__call__(self.app, scope, receive, send)


@pytest.fixture(scope="module")
def routed(client: TestClient) -> TestClient:
    assert isinstance(client.app, FastAPI)
    return TestClient(_ThroughFastAPI(client.app))


def test_the_app_is_still_a_fastapi_app(client: TestClient) -> None:
    assert isinstance(client.app, FastAPI)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (review_bytes(), "application/json"),
        (review_bytes(), "application/json; charset=utf-8"),
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (review_bytes(), "text/plain"),
        (review_bytes(), "application/json; charset=latin-1"),
    ],
    ids=["injected", "charset", "bad-json", "empty", "not-json", "bad-charset"],
)
def test_the_fast_path_answers_exactly_as_the_fastapi_route(
    client: TestClient, routed: TestClient, body: bytes, content_type: str
) -> None:
    fast = client.post("/mutate", content=body, headers={"Content-Type": content_type})
    slow = routed.post("/mutate", content=body, headers={"Content-Type": content_type})
    assert fast.status_code == slow.status_code
    assert fast.content == slow.content
    assert dict(fast.headers) == dict(slow.headers)


def test_a_trailing_slash_is_a_404_not_a_redirect(client: TestClient) -> None:
    answer = client.post("/mutate/", content=review_bytes(), follow_redirects=False)
    assert answer.status_code == 404
    assert "location" not in answer.headers


def test_an_injected_answer_is_a_json_review_with_its_length(client: TestClient) -> None:
    answer = client.post(
        "/mutate", content=review_bytes(uid="u-9"), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert int(answer.headers["content-length"]) == len(answer.content)
    response = answer.json()["response"]
    assert response["uid"] == "u-9"
    assert response["patchType"] == "JSONPatch"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_get_fastapis_405(client: TestClient, method: str) -> None:
    answer = client.request(method, "/mutate")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert answer.json() == {"detail": "Method Not Allowed"}
