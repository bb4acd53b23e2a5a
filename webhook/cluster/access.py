"""The API server's access reviews, for ``/preview``: TokenReview and SubjectAccessReview.

``serve`` asks the API server who holds a bearer token (a TokenReview, as
kube-apiserver's webhook token authenticator does) and whether that user may
``get`` a namespace (a SubjectAccessReview with the user, uid, groups and
extra the TokenReview gave). The injector's ServiceAccount may create both
because the install binds it to ``system:auth-delegator``.

Through ``webhook.cluster.kube``'s bounded requests, like every other call:
each answer at most :data:`MAX_ANSWER_BYTES`, read within the caller's
timeout, no retries. Every failure is a :class:`ReviewUnavailable` with one
line, never a verdict. The token travels only in the request body; no
message here quotes it, or the answer that echoes it.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from webhook.cluster import kube
from webhook.contract.access import ReviewUnavailable, UserInfo

TOKEN_REVIEWS: Final = "/apis/authentication.k8s.io/v1/tokenreviews"  # noqa: S105 - an API path
ACCESS_REVIEWS: Final = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
# A review's answer echoes its spec (the token, the user) and adds a status:
# a few KiB even for users in many groups. 64 KiB is far above any real one.
MAX_ANSWER_BYTES: Final = 64 * kube.KiB
# Reviews are asked while a client waits: a connection that cannot be opened
# this fast is an API server that cannot answer in time either.
CONNECT_TIMEOUT_SECONDS: Final = 2.0


class KubeAccessReviewer:
    """``webhook.contract.access.AccessReviewer`` over one connection pool to the API server."""

    def __init__(
        self,
        configuration: Any,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        max_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._connection = kube.Connection(configuration, connect_timeout=connect_timeout)
        self.host: str = self._connection.host
        self.max_bytes = max_bytes

    @classmethod
    def from_environment(
        cls, kubeconfig: Path | None = None, *, in_cluster: bool | None = None
    ) -> KubeAccessReviewer:
        """A reviewer configured as the namespace cache is (``kube.load_configuration``).

        Raises ``kube.ConfigurationError`` with one line.
        """
        return cls(kube.load_configuration(kubeconfig, in_cluster=in_cluster))

    def review_token(self, token: str, *, timeout: float) -> UserInfo | None:
        """The user ``token`` authenticates as (for the API server's own audiences), or None."""
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        status = self._create(TOKEN_REVIEWS, review, kind="TokenReview", timeout=timeout)
        if status.get("authenticated") is not True:
            return None
        return _user(status.get("user"))

    def may_get_namespace(self, user: UserInfo, namespace: str, *, timeout: float) -> bool:
        """Whether ``user`` may ``get`` Namespace ``namespace``.

        Asked as kube-apiserver asks for ``GET /api/v1/namespaces/NAME``: the
        namespace attribute is the name itself, so a RoleBinding in that
        namespace that grants ``get`` on ``namespaces`` counts, as it does for
        ``kubectl get namespace NAME``.
        """
        spec: dict[str, Any] = {
            "resourceAttributes": {
                "namespace": namespace,
                "verb": "get",
                "group": "",
                "version": "v1",
                "resource": "namespaces",
                "name": namespace,
            },
            "user": user.username,
            "groups": list(user.groups),
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {key: list(values) for key, values in user.extra.items()}
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        status = self._create(ACCESS_REVIEWS, review, kind="SubjectAccessReview", timeout=timeout)
        # evaluationError with allowed false is still a no: the authorizers said so.
        return status.get("allowed") is True and status.get("denied") is not True

    def close(self) -> None:
        """Close the pool's idle connections."""
        self._connection.clear()

    def _create(
        self, path: str, review: dict[str, Any], *, kind: str, timeout: float
    ) -> dict[str, Any]:
        """POST ``review`` and return its answer's ``status``; ``ReviewUnavailable`` otherwise."""
        try:
            answer = self._connection.call(
                "POST",
                path,
                limit=self.max_bytes,
                timeout=timeout,
                body=review,
                what=f"the {kind} answer",
            )
        except kube.APIStatus as err:
            hint = (
                " (the injector's ServiceAccount needs the ClusterRole system:auth-delegator:"
                " manifests/base/rbac.yaml binds it)"
                if err.status == 403
                else ""
            )
            raise ReviewUnavailable(
                f"the API server answered the {kind} with {err}{hint}"
            ) from None
        except Exception as err:  # connection refused, timeouts, TLS, garbled or huge bodies
            raise ReviewUnavailable(f"the {kind} failed: {kube.one_line(err)}") from None
        status = answer.get("status") if isinstance(answer, dict) else None
        if not isinstance(status, dict):
            raise ReviewUnavailable(f"the {kind} answer has no status")
        return status


def _user(value: Any) -> UserInfo:
    """A TokenReview's ``status.user``; ``ReviewUnavailable`` when it is not one."""
    if not isinstance(value, dict):
        raise ReviewUnavailable("the TokenReview answer authenticates no user")
    username = value.get("username")
    uid = value.get("uid", "")
    groups = value.get("groups") or []
    extra = value.get("extra") or {}
    if (
        not isinstance(username, str)
        or not username
        or not isinstance(uid, str)
        or not isinstance(groups, list)
        or not all(isinstance(group, str) for group in groups)
        or not isinstance(extra, dict)
        or not all(
            isinstance(values, list) and all(isinstance(item, str) for item in values)
            for values in extra.values()
        )
    ):
        raise ReviewUnavailable("the TokenReview answer's user is malformed")
    return UserInfo(
        username=username,
        uid=uid,
        groups=tuple(groups),
        extra=MappingProxyType({str(key): tuple(values) for key, values in extra.items()}),
    )
