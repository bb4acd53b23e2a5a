"""``KIND/NAME`` as ``kubectl`` reads it: the kinds ``why`` explains, their short names, paths."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from webhook.engine.values import shorten

MAX_NAME_CHARS: Final = 253
_NAME: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class TargetError(ValueError):
    """``KIND/NAME`` names nothing ``why`` can explain; the message is one line."""


@dataclass(frozen=True)
class Kind:
    """A kind ``why`` explains: where its objects live in the API, and what kubectl calls it."""

    kind: str
    api: str  # "/api/v1", "/apis/apps/v1", "/apis/batch/v1"
    plural: str
    short: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        """The API group (``""`` for the core group)."""
        return "" if self.api == "/api/v1" else self.api.split("/")[2]

    @property
    def names(self) -> tuple[str, ...]:
        """Every spelling kubectl accepts: singular, plural, short, each also with ``.group``."""
        plain = (self.kind.lower(), self.plural, *self.short)
        grouped = tuple(f"{name}.{self.group}" for name in plain) if self.group else ()
        return plain + grouped

    def collection(self, namespace: str) -> str:
        """The path of this kind's objects in ``namespace``."""
        return f"{self.api}/namespaces/{quote(namespace, safe='')}/{self.plural}"

    def path(self, namespace: str, name: str) -> str:
        """The path of one object."""
        return f"{self.collection(namespace)}/{quote(name, safe='')}"


POD: Final = Kind("Pod", "/api/v1", "pods", ("po",))
DEPLOYMENT: Final = Kind("Deployment", "/apis/apps/v1", "deployments", ("deploy",))
STATEFULSET: Final = Kind("StatefulSet", "/apis/apps/v1", "statefulsets", ("sts",))
DAEMONSET: Final = Kind("DaemonSet", "/apis/apps/v1", "daemonsets", ("ds",))
REPLICASET: Final = Kind("ReplicaSet", "/apis/apps/v1", "replicasets", ("rs",))
JOB: Final = Kind("Job", "/apis/batch/v1", "jobs")
CRONJOB: Final = Kind("CronJob", "/apis/batch/v1", "cronjobs", ("cj",))
KINDS: Final = (POD, DEPLOYMENT, STATEFULSET, DAEMONSET, REPLICASET, JOB, CRONJOB)
BY_NAME: Final = {name: kind for kind in KINDS for name in kind.names}
BY_KIND: Final = {kind.kind: kind for kind in KINDS}


@dataclass(frozen=True)
class Target:
    """The object to explain."""

    kind: Kind
    name: str
    namespace: str

    def __str__(self) -> str:
        return f"{self.kind.kind.lower()}/{self.name}"

    @property
    def path(self) -> str:
        """Where the API server has it."""
        return self.kind.path(self.namespace, self.name)


def parse_target(text: str, namespace: str) -> Target:
    """``KIND/NAME`` (``deploy/web``, ``pods/web-0``, ``deployment.apps/web``) in ``namespace``."""
    kind_text, slash, name = text.partition("/")
    if not slash:
        raise TargetError(
            f"{shorten(text, 80)} is not KIND/NAME (for example deployment/web or pod/web-0)"
        )
    kind = BY_NAME.get(kind_text.lower())
    if kind is None:
        kinds = ", ".join(k.kind.lower() for k in KINDS)
        raise TargetError(f"{shorten(kind_text, 80)} is not a kind why explains ({kinds})")
    if len(name) > MAX_NAME_CHARS or _NAME.fullmatch(name) is None:
        raise TargetError(
            f"{shorten(name, 80)} is not a {kind.kind} name (lower-case letters, digits, '-' and "
            f"'.', at most {MAX_NAME_CHARS} characters)"
        )
    return Target(kind, name, namespace)
