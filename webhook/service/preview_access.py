"""Who may preview: in a cluster, callers the API server vouches for, for namespaces they may get.

``/preview`` shows a namespace's settings (its ``xds-address``, its
PodSecurity level, everything under ``sidecar.mesh.io/``), so when the
namespaces come from the API server it answers only a caller whose
``Authorization: Bearer`` token a TokenReview accepts and whose user may
``get`` every namespace the preview reads (a SubjectAccessReview each). With
a namespaces file or no source there is nothing of the cluster's to show,
and the app is given no :class:`PreviewAccess`: previews stay open.

The preview route (``webhook.service.preview_route``) sees only the
:class:`PreviewAccess` interface: :meth:`~PreviewAccess.authenticate` before
the body is read, :meth:`~PreviewAccess.authorize` for the ``namespace=``
query (also before the body) and again, after parsing, for the namespaces
only the body names, before any of them is read. :class:`ClusterAccess` is
the implementation, over a blocking ``webhook.contract.access.AccessReviewer``
(``webhook.cluster.access`` in ``serve``, a fake in the unit tests).

Bounded like every input (:class:`AccessOptions` has the numbers and their
reasons): answers, yes and no, are remembered for a few seconds by the
token's SHA-256 (never the token) in caches bounded in entries and bytes;
reviews in flight are bounded per client address and in all, and a client
past its share is told to retry (429) rather than queued; all the reviews of
one preview share a time budget, past which it is answered 503 (a review
still running is left to finish within its own timeouts, still counted).
The token is never logged, and no answer quotes it.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Final, Generic, Protocol, TypeVar

import anyio
import anyio.to_thread

from webhook.contract.access import AccessReviewer, ReviewUnavailable, UserInfo
from webhook.engine.bounded_cache import BoundedCache
from webhook.service.answers import HTTPError, shown
from webhook.service.asgi import Scope

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

KiB: Final = 1024
MiB: Final = 1024 * KiB

# RFC 6750's "Bearer" scheme; the token itself may be any visible ASCII
# (service account JWTs, static tokens, OIDC tokens all are).
_BEARER: Final = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([\x21-\x7e]+) *")
# The contract's bound on a request's whole header block (431 past it). A
# token is at most that; real ones are a few KiB at most (a service
# account's JWT about one), and a bigger one is refused before it is sent
# to the API server in a review.
MAX_AUTHORIZATION_BYTES: Final = 16 * KiB
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="sidecar-injector"'}
_HOW: Final = "send Authorization: Bearer TOKEN, e.g. TOKEN=$(kubectl create token NAME)"


@dataclass(frozen=True, slots=True)
class AccessOptions:
    """How long answers are remembered and how many reviews may be under way (docs/service.md)."""

    # How long a review's answer, yes or no, is trusted. kube-apiserver's own
    # webhook authenticator keeps answers for minutes; a few seconds let a
    # script's burst of previews cost one review each while a revoked token
    # or a removed RoleBinding takes effect almost at once. "No" is kept as
    # long as "yes", so a client retrying a bad token costs no more reviews.
    ttl_seconds: float = 10.0
    # Tokens remembered (by SHA-256) with the user each stands for. A user is
    # at most a review's answer (64 KiB) and usually a few hundred bytes.
    max_tokens: int = 1_024
    max_token_bytes: int = 4 * MiB
    # (token, namespace) answers remembered; each is a few dozen bytes.
    max_grants: int = 4_096
    max_grant_bytes: int = 1 * MiB
    # Reviews waiting on the API server at once, from one client address and
    # in all. Past either the request is answered at once (429 / 503): a
    # flood of new tokens from one address costs the API server at most this
    # many reviews at a time, and other addresses keep their share.
    reviews_per_address: int = 4
    reviews_at_once: int = 16
    # All the reviews of one preview together (the token, the query's
    # namespace, the namespaces the body names): past this, 503. It also
    # comes off the preview's time for namespace reads
    # (``Limits.preview_lookup_seconds``), so that every preview is still
    # answered within 15 s.
    review_seconds: float = 2.0


@dataclass
class ReviewBudget:
    """The time one preview's reviews may still take, in seconds."""

    seconds: float
    spent: float = 0.0

    @property
    def left(self) -> float:
        """Seconds not spent yet (0 or less: none)."""
        return self.seconds - self.spent


@dataclass
class Caller:
    """An authenticated caller of one preview: who, from where, and what their reviews cost."""

    user: UserInfo
    # SHA-256 of the token: what the caches know the caller by.
    key: bytes
    address: str
    budget: ReviewBudget
    # Namespaces this preview may read (so each is asked about once).
    granted: set[str] = field(default_factory=set)


class PreviewAccess(Protocol):
    """What the preview route asks; the app is given one only when namespaces are the cluster's."""

    async def authenticate(self, scope: Scope) -> Caller:
        """The caller of this request; raises :class:`HTTPError` (401, 429, 503) otherwise."""
        ...

    async def authorize(self, caller: Caller, namespaces: Iterable[str]) -> None:
        """Return when ``caller`` may get every one of ``namespaces``; else :class:`HTTPError`
        (403 naming the first that is refused, 429, 503)."""
        ...

    def close(self) -> None:
        """Release what the reviews hold (connections); called when the app stops."""
        ...


def unauthorized(message: str) -> HTTPError:
    """401 with a Bearer challenge; the connection is closed (the body was not read)."""
    return HTTPError(401, "unauthorized", message, close=True, headers=_CHALLENGE)


def bearer_token(scope: Scope) -> str:
    """The request's bearer token; 401 when there is none, or more than one, or it is malformed,
    431 when it is longer than the header limit allows.

    No message quotes the header: it is a credential even when malformed.
    """
    values = [value for name, value in scope["headers"] if name == b"authorization"]
    if not values:
        raise unauthorized(f"this preview reads the cluster's namespaces: {_HOW}")
    if len(values) > 1:
        raise unauthorized(f"more than one Authorization header: {_HOW}")
    if len(values[0]) > MAX_AUTHORIZATION_BYTES:
        raise HTTPError(
            431,
            "headers_too_large",
            f"the Authorization header is over {MAX_AUTHORIZATION_BYTES} bytes",
            close=True,
        )
    match = _BEARER.fullmatch(values[0])
    if match is None:
        raise unauthorized(f"the Authorization header is not a bearer token: {_HOW}")
    return match[1].decode("ascii")


def client_address(scope: Scope) -> str:
    """The client's address (its port aside), as the per-address bounds count it."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


@dataclass(frozen=True, slots=True)
class _Remembered(Generic[T]):
    value: T
    until: float


class _Flight:
    """One review's thread: counted from before it starts until it really ends.

    A preview that stops waiting (its budget ran out) leaves the thread to
    finish within the reviewer's own timeouts; the count goes on holding its
    place meanwhile, so abandoned reviews cannot pile up past the bounds.
    """

    def __init__(self, leave: Callable[[], None]) -> None:
        self._leave = leave
        self._lock = threading.Lock()
        self._started = False
        self._abandoned = False

    def run(self, call: Callable[[], T]) -> T | None:
        """In the worker thread: ``call()``, unless the waiter gave up before it started."""
        with self._lock:
            if self._abandoned:
                return None
            self._started = True
        try:
            return call()
        finally:
            self._leave()

    def abandon(self) -> None:
        """On the loop, when the waiter gives up: release the place now if the thread never ran."""
        with self._lock:
            self._abandoned = True
            never_ran = not self._started
        if never_ran:
            self._leave()


class ClusterAccess:
    """:class:`PreviewAccess` by TokenReview and SubjectAccessReview, remembered briefly.

    ``clock`` (monotonic seconds) is for the caches' expiry, so that tests can
    move time; the review budget is measured with ``time.monotonic``.
    """

    def __init__(
        self,
        reviewer: AccessReviewer,
        options: AccessOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reviewer = reviewer
        self.options = opts = options if options is not None else AccessOptions()
        self._clock = clock
        self._tokens: BoundedCache[bytes, _Remembered[UserInfo | None]] = BoundedCache(
            max_entries=opts.max_tokens, max_bytes=opts.max_token_bytes
        )
        self._grants: BoundedCache[tuple[bytes, str], _Remembered[bool]] = BoundedCache(
            max_entries=opts.max_grants, max_bytes=opts.max_grant_bytes
        )
        # Its own threads: reviews never take the default pool's, which
        # /mutate's namespace reads use. Never the binding bound: _enter is.
        self._threads = anyio.CapacityLimiter(opts.reviews_at_once)
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._total = 0

    @property
    def reviews_in_flight(self) -> int:
        """Review threads not finished yet (abandoned ones included)."""
        return self._total

    async def authenticate(self, scope: Scope) -> Caller:
        """Who holds the request's bearer token (TokenReview), from memory when recent."""
        token = bearer_token(scope)
        key = hashlib.sha256(token.encode("ascii")).digest()
        address = client_address(scope)
        budget = ReviewBudget(self.options.review_seconds)
        remembered = self._recall(self._tokens, key)
        if remembered is None:

            def review(timeout: float) -> UserInfo | None:
                return self._reviewer.review_token(token, timeout=timeout)

            user = await self._review(address, budget, "TokenReview", review)
            size = 64 + len(key) + (user.size() if user is not None else 0)
            self._tokens.put(key, self._remember(user), size=size)
        else:
            user = remembered.value
        if user is None:
            raise unauthorized(f"the API server did not accept the bearer token: {_HOW}")
        return Caller(user, key, address, budget)

    async def authorize(self, caller: Caller, namespaces: Iterable[str]) -> None:
        """Whether ``caller`` may get each namespace (SubjectAccessReview), asked one by one."""
        for name in dict.fromkeys(namespaces):
            if name in caller.granted:
                continue
            remembered = self._recall(self._grants, (caller.key, name))
            if remembered is None:

                def review(timeout: float, name: str = name) -> bool:
                    return self._reviewer.may_get_namespace(caller.user, name, timeout=timeout)

                allowed = await self._review(
                    caller.address, caller.budget, "SubjectAccessReview", review
                )
                self._grants.put((caller.key, name), self._remember(allowed), size=96 + len(name))
            else:
                allowed = remembered.value
            if not allowed:
                # Closed, as every refusal here: the query's is answered
                # before the body is read, and draining it would cost more.
                raise HTTPError(
                    403,
                    "forbidden",
                    f"user {shown(caller.user.username)} may not get namespace {shown(name)},"
                    " which this preview reads",
                    close=True,
                )
            caller.granted.add(name)

    def close(self) -> None:
        """Close the reviewer's connections."""
        self._reviewer.close()

    # -- memory -------------------------------------------------------------------------

    def _remember(self, value: T) -> _Remembered[T]:
        return _Remembered(value, self._clock() + self.options.ttl_seconds)

    def _recall(self, cache: BoundedCache[K, _Remembered[V]], key: K) -> _Remembered[V] | None:
        found = cache.get(key)
        return found if found is not None and self._clock() < found.until else None

    # -- reviews ------------------------------------------------------------------------

    async def _review(
        self, address: str, budget: ReviewBudget, kind: str, call: Callable[[float], T]
    ) -> T:
        """``call(timeout)`` in a review thread, within the bounds and the preview's budget."""
        left = budget.left
        if left <= 0:
            raise _late(kind, budget.seconds)
        flight = _Flight(self._enter(address))
        start = time.monotonic()
        result: T | None = None
        try:
            with anyio.move_on_after(left) as waited:
                result = await anyio.to_thread.run_sync(
                    flight.run,
                    lambda: call(left),
                    abandon_on_cancel=True,
                    limiter=self._threads,
                )
        except ReviewUnavailable as err:
            raise HTTPError(
                503, "unavailable", f"cannot check access now: {err}", close=True
            ) from None
        finally:
            budget.spent += time.monotonic() - start
        if waited.cancelled_caught:
            flight.abandon()
            raise _late(kind, budget.seconds)
        return result  # type: ignore[return-value]  # set whenever the wait was not cut

    def _enter(self, address: str) -> Callable[[], None]:
        """Count a review from ``address``, or refuse it (429 / 503); returns its release."""
        opts = self.options
        with self._lock:
            if self._in_flight.get(address, 0) >= opts.reviews_per_address:
                raise HTTPError(
                    429,
                    "throttled",
                    f"{opts.reviews_per_address} access reviews for {address} are under way;"
                    " retry shortly",
                    close=True,
                    headers={"Retry-After": "1"},
                )
            if self._total >= opts.reviews_at_once:
                raise HTTPError(
                    503,
                    "busy",
                    "too many access reviews are under way; retry shortly",
                    close=True,
                )
            self._in_flight[address] = self._in_flight.get(address, 0) + 1
            self._total += 1
        released = False

        def leave() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._total -= 1
                count = self._in_flight[address] - 1
                if count:
                    self._in_flight[address] = count
                else:
                    del self._in_flight[address]

        return leave


def _late(kind: str, seconds: float) -> HTTPError:
    return HTTPError(
        503,
        "unavailable",
        f"cannot check access now: the API server did not answer the {kind}"
        f" within this preview's {seconds:g} s for access reviews",
        close=True,
    )
