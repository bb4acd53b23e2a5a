"""``webhook.cluster.access``: the TokenReview and SubjectAccessReview, asked of an API server.

Against the fake API server (``harness.fake_kube_api``) through the official
client's configuration and pool, as ``serve`` asks them: what is sent (the
token in the body only, the user's uid, groups and extra in the access
review, the namespace attributes ``kubectl get namespace`` is authorized
with), what comes back, and every way an answer can be unusable (refused,
slow, huge, endless, garbled, no server at all), each a one-line
``ReviewUnavailable`` that never quotes the token.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.fake_kube_api import FakeKubeAPI, handlers
from webhook.cluster.access import (
    ACCESS_REVIEWS,
    MAX_ANSWER_BYTES,
    TOKEN_REVIEWS,
    KubeAccessReviewer,
)
from webhook.contract.access import ReviewUnavailable, UserInfo

TOKEN = "eyJhbGciOi.secret-payload.signature"


@pytest.fixture
def reviewer(fake_api: FakeKubeAPI, tmp_path: Path) -> Iterator[KubeAccessReviewer]:
    kubeconfig = fake_api.write_kubeconfig(tmp_path / "kubeconfig", token="injector-own-token")
    made = KubeAccessReviewer.from_environment(kubeconfig, in_cluster=False)
    try:
        yield made
    finally:
        made.close()


def test_the_routes_are_the_review_apis_the_fake_serves() -> None:
    assert TOKEN_REVIEWS == handlers.TOKEN_REVIEWS
    assert ACCESS_REVIEWS == handlers.SUBJECT_ACCESS_REVIEWS


def test_an_accepted_token_is_the_user_the_api_server_names(
    fake_api: FakeKubeAPI, reviewer: KubeAccessReviewer
) -> None:
    fake_api.route(TOKEN_REVIEWS, handlers.token_review({TOKEN: "alice"}, groups=["devs"]))
    user = reviewer.review_token(TOKEN, timeout=5)
    assert user == UserInfo("alice", groups=("devs",))
    (call,) = fake_api.calls_to(TOKEN_REVIEWS)
    assert call.method == "POST"
    assert call.body == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": TOKEN},
    }
    # The injector authenticates as itself; the caller's token is only in the body.
    assert fake_api.authorizations == {"Bearer injector-own-token"}


def test_a_token_the_api_server_does_not_accept_is_no_user(
    fake_api: FakeKubeAPI, reviewer: KubeAccessReviewer
) -> None:
    fake_api.route(TOKEN_REVIEWS, handlers.token_review({TOKEN: "alice"}))
    assert reviewer.review_token("forged", timeout=5) is None


def test_uid_and_extra_come_back_as_the_token_review_gives_them(
    fake_api: FakeKubeAPI, reviewer: KubeAccessReviewer
) -> None:
    user = {
        "username": "system:serviceaccount:demo:viewer",
        "uid": "8c1d",
        "groups": ["system:serviceaccounts", "system:authenticated"],
        "extra": {"authentication.kubernetes.io/pod-name": ["web-0"]},
    }
    answer = {"status": {"authenticated": True, "user": user}}
    fake_api.route(TOKEN_REVIEWS, handlers.json_reply(answer, 201))
    found = reviewer.review_token(TOKEN, timeout=5)
    assert found is not None
    assert (found.username, found.uid) == ("system:serviceaccount:demo:viewer", "8c1d")
    assert found.groups == ("system:serviceaccounts", "system:authenticated")
    assert dict(found.extra) == {"authentication.kubernetes.io/pod-name": ("web-0",)}


def test_the_access_review_asks_what_kubectl_get_namespace_is_authorized_by(
    fake_api: FakeKubeAPI, reviewer: KubeAccessReviewer
) -> None:
    fake_api.route(
        ACCESS_REVIEWS,
        handlers.subject_access_review(
            lambda spec: spec["resourceAttributes"]["namespace"] == "demo"
        ),
    )
    user = UserInfo("alice", uid="u1", groups=("devs",), extra={"scopes": ("a", "b")})
    assert reviewer.may_get_namespace(user, "demo", timeout=5) is True
    assert reviewer.may_get_namespace(user, "payments", timeout=5) is False
    first = fake_api.calls_to(ACCESS_REVIEWS)[0].body
    assert first == {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "namespace": "demo",
                "verb": "get",
                "group": "",
                "version": "v1",
                "resource": "namespaces",
                "name": "demo",
            },
            "user": "alice",
            "groups": ["devs"],
            "uid": "u1",
            "extra": {"scopes": ["a", "b"]},
        },
    }


def test_an_explicit_deny_or_an_evaluation_error_is_a_no(
    fake_api: FakeKubeAPI, reviewer: KubeAccessReviewer
) -> None:
    answers = iter(
        [
            {"status": {"allowed": True, "denied": True}},
            {"status": {"allowed": False, "evaluationError": "webhook down"}},
        ]
    )

    def answer(request: handlers.Request, path: str, query: dict[str, str]) -> None:
        request.send_json(201, next(answers))

    fake_api.route(ACCESS_REVIEWS, answer)
    assert reviewer.may_get_namespace(UserInfo("alice"), "demo", timeout=5) is False
    assert reviewer.may_get_namespace(UserInfo("alice"), "demo", timeout=5) is False


@pytest.mark.parametrize(
    ("handler", "says"),
    [
        (
            handlers.status_reply(403, "Forbidden", "tokenreviews is forbidden"),
            "the API server answered the TokenReview with HTTP 403: tokenreviews is forbidden (the"
            " injector's ServiceAccount needs the ClusterRole system:auth-delegator:"
            " manifests/base/rbac.yaml binds it)",
        ),
        (
            handlers.status_reply(500, "InternalError", "etcd is down"),
            "the API server answered the TokenReview with HTTP 500: etcd is down",
        ),
        (handlers.huge_page(4 * MAX_ANSWER_BYTES), "over the 65536-byte limit"),
        (handlers.endless_chunks(interval=0, chunk=b" " * 4096), "over the 65536-byte limit"),
        (handlers.endless_chunks(interval=0.05), "did not arrive within 0.5s"),
        (handlers.hang(), "the TokenReview failed: "),
        (handlers.json_reply({"kind": "TokenReview"}, 201), "the TokenReview answer has no status"),
        (handlers.json_reply([1, 2], 201), "the TokenReview answer has no status"),
        (
            handlers.json_reply({"status": {"authenticated": True, "user": {"groups": 1}}}, 201),
            "the TokenReview answer's user is malformed",
        ),
        (
            handlers.json_reply({"status": {"authenticated": True}}, 201),
            "the TokenReview answer authenticates no user",
        ),
    ],
)
def test_every_unusable_answer_is_one_line_that_never_quotes_the_token(
    fake_api: FakeKubeAPI, reviewer: KubeAccessReviewer, handler: handlers.Handler, says: str
) -> None:
    fake_api.route(TOKEN_REVIEWS, handler)
    with pytest.raises(ReviewUnavailable) as caught:
        reviewer.review_token(TOKEN, timeout=0.5)
    fake_api.release()
    message = str(caught.value)
    assert says in message
    assert "\n" not in message
    assert "secret-payload" not in message


def test_an_api_server_that_is_gone_is_unavailable_not_a_crash(
    fake_api: FakeKubeAPI, reviewer: KubeAccessReviewer
) -> None:
    fake_api.stop()
    with pytest.raises(ReviewUnavailable) as caught:
        reviewer.may_get_namespace(UserInfo("alice"), "demo", timeout=0.5)
    assert str(caught.value).startswith("the SubjectAccessReview failed: ")
