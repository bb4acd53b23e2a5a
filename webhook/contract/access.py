"""Who is calling, and whether the cluster lets them: the types of the API server's access reviews.

``/preview`` reads real namespaces, so in a cluster it answers only callers
the cluster itself vouches for: a TokenReview (authentication.k8s.io/v1) says
who holds a bearer token, a SubjectAccessReview (authorization.k8s.io/v1)
whether that user may ``get`` a namespace. A module of its own, like
``webhook.contract.namespaces``: ``webhook.cluster.access`` asks the API
server and returns these, ``webhook.service.preview_access`` decides with them
(and its tests with a fake), and neither imports the other's dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

_NO_EXTRA: Mapping[str, tuple[str, ...]] = MappingProxyType({})


class ReviewUnavailable(Exception):
    """The API server could not answer a review (unreachable, late, refused, garbled); one line.

    Never a verdict: callers answer "try again", not "no".
    """


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A user as a TokenReview describes them; a SubjectAccessReview asks about exactly this."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: _NO_EXTRA)

    def size(self) -> int:
        """About how many bytes this holds, for bounded caches."""
        extra = sum(len(key) + sum(len(v) for v in values) for key, values in self.extra.items())
        return 64 + len(self.username) + len(self.uid) + sum(map(len, self.groups)) + extra


class AccessReviewer(Protocol):
    """The two reviews, asked of the API server. Blocking: call them from a worker thread.

    Each returns within about ``timeout`` seconds (plus the connection's own
    connect timeout) whatever the server does, or raises
    :class:`ReviewUnavailable`.
    """

    def review_token(self, token: str, *, timeout: float) -> UserInfo | None:
        """The user ``token`` authenticates as; ``None`` when the API server does not accept it."""
        ...

    def may_get_namespace(self, user: UserInfo, namespace: str, *, timeout: float) -> bool:
        """Whether ``user`` may ``get`` the Namespace ``namespace``."""
        ...

    def close(self) -> None:
        """Release connections; later calls may open new ones."""
        ...
