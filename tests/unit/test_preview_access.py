"""Who may preview in a cluster: ``ClusterAccess`` over a scripted reviewer.

The reviews themselves (the API server's TokenReview and SubjectAccessReview)
are faked (``access_fakes.FakeReviewer``); what is tested is the deciding
around them: the bearer header, the 401/403 texts, the caches (by the
token's hash, yes and no, expiring), the bounds on reviews in flight per
address and in all, the time budget of one preview's reviews (and a review
that outlives it still counted), and an API server that cannot answer.
No wall time is measured: held reviews wait for the test, expiry uses a
clock the test moves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import pytest

from tests.unit.access_fakes import ALICE, FakeReviewer, scope
from webhook.service.answers import HTTPError, error_answer
from webhook.service.preview_access import (
    MAX_AUTHORIZATION_BYTES,
    AccessOptions,
    Caller,
    ClusterAccess,
    bearer_token,
)

T = TypeVar("T")


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(func: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(func)


def refusal(func: Callable[[], Awaitable[Any]]) -> HTTPError:
    """The HTTPError ``func`` raises (it must raise one)."""
    with pytest.raises(HTTPError) as caught:
        run(func)
    return caught.value


def access(reviewer: FakeReviewer, clock: Clock | None = None, **options: Any) -> ClusterAccess:
    return ClusterAccess(reviewer, AccessOptions(**options), clock=clock or Clock())


# --- the bearer header -----------------------------------------------------------------


def test_a_bearer_token_is_taken_from_the_authorization_header_whatever_the_schemes_case() -> None:
    assert bearer_token(scope("abc.def-ghi_~+/=")) == "abc.def-ghi_~+/="
    assert bearer_token(scope(authorization=[b"bearer   tok  "])) == "tok"
    assert bearer_token(scope(authorization=[b"BEARER tok"])) == "tok"


@pytest.mark.parametrize(
    ("authorization", "says"),
    [
        ([], "this preview reads the cluster's namespaces: send Authorization: Bearer TOKEN"),
        ([b"Bearer one", b"Bearer two"], "more than one Authorization header"),
        ([b"Basic c2VjcmV0LXRva2Vu"], "the Authorization header is not a bearer token"),
        ([b"Bearer"], "the Authorization header is not a bearer token"),
        ([b"Bearer secret-token\x1b[2J"], "the Authorization header is not a bearer token"),
        ([b"Bearer secret token"], "the Authorization header is not a bearer token"),
        (["Bearer sécret-token".encode()], "the Authorization header is not a bearer token"),
    ],
)
def test_a_missing_or_malformed_header_is_a_401_that_never_quotes_it(
    authorization: list[bytes], says: str
) -> None:
    with pytest.raises(HTTPError) as caught:
        bearer_token(scope(authorization=authorization))
    err = caught.value
    assert (err.status, err.outcome) == (401, "unauthorized")
    assert str(err).startswith(says)
    assert "kubectl create token" in str(err)
    assert "secret" not in str(err)
    assert "c2VjcmV0" not in str(err)
    assert err.headers["WWW-Authenticate"].startswith("Bearer")
    assert err.close  # answered before the body: the connection is not drained


def test_an_authorization_header_past_the_header_limit_is_a_431_and_never_reviewed() -> None:
    reviewer = FakeReviewer(users={"x" * MAX_AUTHORIZATION_BYTES: ALICE})
    gate = access(reviewer)
    at_limit = "x" * (MAX_AUTHORIZATION_BYTES - len("Bearer "))
    with pytest.raises(HTTPError) as caught:
        run(lambda: gate.authenticate(scope(at_limit)))
    assert caught.value.status == 401  # reviewed, not accepted
    err = refusal(lambda: gate.authenticate(scope(at_limit + "x")))
    assert (err.status, err.outcome) == (431, "headers_too_large")
    assert str(err) == f"the Authorization header is over {MAX_AUTHORIZATION_BYTES} bytes"
    assert reviewer.token_reviews == [at_limit]


def test_a_401_is_a_one_line_json_error_with_the_bearer_challenge() -> None:
    with pytest.raises(HTTPError) as caught:
        bearer_token(scope(None))
    answer = error_answer(caught.value)
    assert answer.status == 401
    assert answer.body.count(b"\n") == 0
    assert answer.body.startswith(b'{"error":"this preview reads')
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="sidecar-injector"'
    assert answer.headers["Connection"] == "close"


# --- authentication ----------------------------------------------------------------------


def test_an_accepted_token_is_the_user_the_token_review_names() -> None:
    reviewer = FakeReviewer()
    caller = run(lambda: access(reviewer).authenticate(scope("alice-token")))
    assert caller.user == ALICE
    assert caller.address == "10.0.0.1"
    assert reviewer.token_reviews == ["alice-token"]
    assert "alice-token" not in repr(caller.key)


def test_a_token_the_api_server_does_not_accept_is_a_401_that_does_not_quote_it() -> None:
    reviewer = FakeReviewer()
    err = refusal(lambda: access(reviewer).authenticate(scope("stolen-secret")))
    assert (err.status, err.outcome) == (401, "unauthorized")
    assert str(err).startswith("the API server did not accept the bearer token")
    assert "stolen-secret" not in str(err)


def test_answers_yes_and_no_are_remembered_for_the_ttl_then_asked_again() -> None:
    reviewer, clock = FakeReviewer(), Clock()
    gate = access(reviewer, clock, ttl_seconds=10.0)

    async def both() -> None:
        await gate.authenticate(scope("alice-token"))
        with pytest.raises(HTTPError):
            await gate.authenticate(scope("nobody"))

    run(both)
    clock.now += 9.9
    run(both)
    assert reviewer.token_reviews == ["alice-token", "nobody"]
    clock.now += 0.2
    run(both)
    assert reviewer.token_reviews == ["alice-token", "nobody"] * 2


def test_the_token_cache_is_bounded_in_entries() -> None:
    reviewer = FakeReviewer(users={f"t{n}": ALICE for n in range(3)})
    gate = access(reviewer, max_tokens=2)

    async def each() -> None:
        for token in ("t0", "t1", "t2", "t0"):
            await gate.authenticate(scope(token))

    run(each)
    # t0 was pushed out by t2 (least recently used), so it is reviewed again.
    assert reviewer.token_reviews == ["t0", "t1", "t2", "t0"]


# --- authorization -----------------------------------------------------------------------


def test_a_user_allowed_to_get_the_namespace_passes_and_the_review_carries_the_user() -> None:
    reviewer = FakeReviewer(allowed={("alice", "demo")})
    gate = access(reviewer)

    async def check() -> Caller:
        caller = await gate.authenticate(scope("alice-token"))
        await gate.authorize(caller, ["demo", "demo"])
        await gate.authorize(caller, ["demo"])
        return caller

    caller = run(check)
    assert reviewer.access_reviews == [(ALICE, "demo")]
    assert caller.granted == {"demo"}


def test_a_namespace_the_user_may_not_get_is_a_403_naming_the_user_and_the_namespace() -> None:
    reviewer = FakeReviewer(allowed={("alice", "demo")})
    gate = access(reviewer)

    async def check() -> None:
        caller = await gate.authenticate(scope("alice-token"))
        await gate.authorize(caller, ["demo", "payments", "other"])

    err = refusal(check)
    assert (err.status, err.outcome) == (403, "forbidden")
    assert str(err) == "user 'alice' may not get namespace 'payments', which this preview reads"
    # The first refusal ends it: 'other' is not asked about.
    assert [name for _, name in reviewer.access_reviews] == ["demo", "payments"]


def test_a_user_name_with_control_characters_is_shown_escaped_in_a_403() -> None:
    from webhook.contract.access import UserInfo

    reviewer = FakeReviewer(users={"t": UserInfo("eve\x1b]0;pwned\x07")})
    gate = access(reviewer)

    async def check() -> None:
        await gate.authorize(await gate.authenticate(scope("t")), ["demo"])

    err = refusal(check)
    assert "\x1b" not in str(err)
    assert "\x07" not in str(err)
    assert "eve\\x1b]0;pwned\\x07" in str(err)


def test_access_answers_are_remembered_per_token_and_namespace_yes_and_no() -> None:
    reviewer, clock = FakeReviewer(allowed={("alice", "demo")}), Clock()
    gate = access(reviewer, clock, ttl_seconds=10.0)

    async def preview(namespace: str) -> int:
        caller = await gate.authenticate(scope("alice-token"))
        try:
            await gate.authorize(caller, [namespace])
        except HTTPError as err:
            return err.status
        return 200

    def twice() -> list[int]:
        return [run(lambda: preview("demo")), run(lambda: preview("payments"))]

    assert twice() == [200, 403]
    assert twice() == [200, 403]
    assert len(reviewer.access_reviews) == 2
    clock.now += 11
    assert twice() == [200, 403]
    assert len(reviewer.access_reviews) == 4


# --- bounds ------------------------------------------------------------------------------


def test_reviews_in_flight_are_bounded_per_address_and_other_addresses_keep_their_share() -> None:
    reviewer = FakeReviewer(users={f"t{n}": ALICE for n in range(6)})
    gate = access(reviewer, reviews_per_address=2, reviews_at_once=8)
    outcomes: dict[str, int] = {}

    async def ask(token: str, address: str) -> None:
        try:
            await gate.authenticate(scope(token, address=address))
            outcomes[token] = 200
        except HTTPError as err:
            outcomes[token] = err.status

    async def flood() -> None:
        reviewer.hold()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ask, "t0", "10.0.0.1")
            tasks.start_soon(ask, "t1", "10.0.0.1")
            await anyio.to_thread.run_sync(reviewer.wait_for_waiting, 2)
            await ask("t2", "10.0.0.1")  # a third from the same address: turned away
            assert outcomes == {"t2": 429}
            tasks.start_soon(ask, "t3", "10.0.0.2")  # another address still gets its turn
            await anyio.to_thread.run_sync(reviewer.wait_for_waiting, 3)
            reviewer.release()

    run(flood)
    assert outcomes == {"t0": 200, "t1": 200, "t2": 429, "t3": 200}
    assert "t2" not in reviewer.token_reviews
    assert gate.reviews_in_flight == 0


def test_a_429_asks_to_retry_and_closes_the_connection() -> None:
    reviewer = FakeReviewer(users={"a": ALICE, "b": ALICE})
    gate = access(reviewer, reviews_per_address=1)
    caught: list[HTTPError] = []

    async def flood() -> None:
        reviewer.hold()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(gate.authenticate, scope("a"))
            await anyio.to_thread.run_sync(reviewer.wait_for_waiting, 1)
            try:
                await gate.authenticate(scope("b"))
            except HTTPError as err:
                caught.append(err)
            reviewer.release()

    run(flood)
    (err,) = caught
    answer = error_answer(err)
    assert (answer.status, err.outcome) == (429, "throttled")
    assert answer.headers["Retry-After"] == "1"
    assert answer.headers["Connection"] == "close"
    assert str(err) == "1 access reviews for 10.0.0.1 are under way; retry shortly"


def test_reviews_in_flight_are_bounded_in_all_with_a_503() -> None:
    reviewer = FakeReviewer(users={f"t{n}": ALICE for n in range(3)})
    gate = access(reviewer, reviews_per_address=4, reviews_at_once=2)
    caught: list[HTTPError] = []

    async def flood() -> None:
        reviewer.hold()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(gate.authenticate, scope("t0", address="10.0.0.1"))
            tasks.start_soon(gate.authenticate, scope("t1", address="10.0.0.2"))
            await anyio.to_thread.run_sync(reviewer.wait_for_waiting, 2)
            try:
                await gate.authenticate(scope("t2", address="10.0.0.3"))
            except HTTPError as err:
                caught.append(err)
            reviewer.release()

    run(flood)
    (err,) = caught
    assert (err.status, err.outcome) == (503, "busy")
    assert str(err) == "too many access reviews are under way; retry shortly"


def test_a_review_past_the_budget_is_a_503_and_its_thread_stays_counted_until_it_ends() -> None:
    reviewer = FakeReviewer()
    gate = access(reviewer, review_seconds=0.05, reviews_per_address=1)
    reviewer.hold()
    err = refusal(lambda: gate.authenticate(scope("alice-token")))
    assert (err.status, err.outcome) == (503, "unavailable")
    assert str(err) == (
        "cannot check access now: the API server did not answer the TokenReview"
        " within this preview's 0.05 s for access reviews"
    )
    # The abandoned review still holds its place: the address gets no second one.
    assert gate.reviews_in_flight == 1
    again = refusal(lambda: gate.authenticate(scope("bob-token")))
    assert again.status == 429
    reviewer.release()
    deadline = anyio.run(lambda: _until(lambda: gate.reviews_in_flight == 0))
    assert deadline
    # Nothing was remembered from the late answer's request.
    assert reviewer.token_reviews == ["alice-token"]


async def _until(condition: Callable[[], bool]) -> bool:
    with anyio.fail_after(30):
        while not condition():
            await anyio.sleep(0.005)
    return True


def test_every_review_of_one_preview_shares_the_budget_and_gets_only_what_is_left() -> None:
    reviewer = FakeReviewer(allowed={("alice", "a"), ("alice", "b")})
    gate = access(reviewer, review_seconds=5.0)

    async def check() -> Caller:
        caller = await gate.authenticate(scope("alice-token"))
        caller.budget.spent = 4.0  # as if the reviews so far had taken 4 s
        await gate.authorize(caller, ["a"])
        caller.budget.spent = 5.0
        await gate.authorize(caller, ["b"])
        return caller

    err = refusal(check)
    assert err.status == 503
    assert "did not answer the SubjectAccessReview within this preview's 5 s" in str(err)
    assert reviewer.timeouts[0] == 5.0
    assert reviewer.timeouts[1] <= 1.0
    assert [name for _, name in reviewer.access_reviews] == ["a"]


def test_an_api_server_that_cannot_answer_is_a_503_with_its_reason_and_nothing_is_remembered() -> (
    None
):
    reviewer = FakeReviewer()
    reviewer.failure = "the TokenReview failed: ConnectionRefusedError: [Errno 111]"
    gate = access(reviewer)
    err = refusal(lambda: gate.authenticate(scope("alice-token")))
    assert (err.status, err.outcome) == (503, "unavailable")
    assert str(err) == (
        "cannot check access now: the TokenReview failed: ConnectionRefusedError: [Errno 111]"
    )
    assert error_answer(err).headers["Retry-After"] == "1"
    reviewer.failure = None
    caller = run(lambda: gate.authenticate(scope("alice-token")))
    assert caller.user == ALICE
    assert reviewer.token_reviews == ["alice-token", "alice-token"]
    assert gate.reviews_in_flight == 0


def test_closing_the_access_closes_the_reviewer() -> None:
    reviewer = FakeReviewer()
    access(reviewer).close()
    assert reviewer.closed
