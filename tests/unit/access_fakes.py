"""A scripted ``AccessReviewer`` and request scopes for the preview access tests.

The reviewer answers from tables (token -> user, (user, namespace) -> allowed),
records every review it is asked, and can hold reviews until the test lets
them go (``hold``/``release``), or fail them as an unreachable API server does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from webhook.contract.access import ReviewUnavailable, UserInfo

ALICE = UserInfo("alice", uid="u-1", groups=("devs", "system:authenticated"), extra={"x": ("1",)})
BOB = UserInfo("bob")
# Nothing in a test waits longer than this on a held review.
HOLD_CAP_SECONDS = 30.0


class FakeReviewer:
    """``webhook.contract.access.AccessReviewer`` from tables, recording what it is asked."""

    def __init__(
        self,
        users: Mapping[str, UserInfo] | None = None,
        allowed: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.users = dict(users if users is not None else {"alice-token": ALICE, "bob-token": BOB})
        self.allowed = set(allowed)
        self.token_reviews: list[str] = []
        self.access_reviews: list[tuple[UserInfo, str]] = []
        self.timeouts: list[float] = []
        self.failure: str | None = None
        self.closed = False
        self._held = False
        self._released = threading.Event()
        self._lock = threading.Lock()
        self.waiting = 0

    def hold(self) -> None:
        """From now on, reviews wait until :meth:`release`."""
        self._held = True
        self._released.clear()

    def release(self) -> None:
        """Let every held review go on (and stop holding new ones)."""
        self._held = False
        self._released.set()

    def wait_for_waiting(self, count: int) -> None:
        """Poll until ``count`` reviews are held (from a thread or the test)."""
        deadline = time.monotonic() + HOLD_CAP_SECONDS
        while self.waiting < count:
            assert time.monotonic() < deadline, f"{self.waiting} reviews held, not {count}"
            time.sleep(0.005)

    def _answer(self, timeout: float) -> None:
        self.timeouts.append(timeout)
        if self._held:
            with self._lock:
                self.waiting += 1
            try:
                self._released.wait(HOLD_CAP_SECONDS)
            finally:
                with self._lock:
                    self.waiting -= 1
        if self.failure is not None:
            raise ReviewUnavailable(self.failure)

    def review_token(self, token: str, *, timeout: float) -> UserInfo | None:
        self.token_reviews.append(token)
        self._answer(timeout)
        return self.users.get(token)

    def may_get_namespace(self, user: UserInfo, namespace: str, *, timeout: float) -> bool:
        self.access_reviews.append((user, namespace))
        self._answer(timeout)
        return (user.username, namespace) in self.allowed

    def close(self) -> None:
        self.closed = True


def scope(
    token: str | None = "alice-token",  # noqa: S107 - the fake reviewer's user
    *,
    address: str = "10.0.0.1",
    authorization: Iterable[bytes] | None = None,
) -> dict[str, Any]:
    """An ASGI HTTP scope for ``POST /preview`` carrying ``Authorization: Bearer token``.

    ``authorization`` gives the raw header values instead (none, several, malformed).
    """
    if authorization is None:
        authorization = [] if token is None else [f"Bearer {token}".encode()]
    headers = [(b"host", b"injector"), (b"content-type", b"application/json")]
    headers += [(b"authorization", value) for value in authorization]
    return {
        "type": "http",
        "method": "POST",
        "path": "/preview",
        "query_string": b"",
        "headers": headers,
        "client": (address, 40000),
    }
