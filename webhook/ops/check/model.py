"""The pieces ``check`` is made of: results, checks, and the discovery steps they need.

A ``Check`` is a name, a standing hint, a fatal flag, the discovery steps it
needs and a function from the ``Context`` to an ``Outcome``; calling it gives
the ``Result`` the renderers print. A ``Discovery`` step reads the cluster
once and fills one field of the context for every check after it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar

from webhook.cluster.reader import Cluster
from webhook.ops.check.context import Context

Status = Literal["pass", "warn", "fail", "skip"]
T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    """One check's verdict: a line for people, a hint when it is not a pass, details."""

    name: str
    status: Status
    message: str
    hint: str = ""
    details: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The result as ``-o json`` prints it."""
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "hint": self.hint,
            "details": list(self.details),
            "data": dict(self.data),
        }


def plural(count: int, word: str, plural: str | None = None) -> str:
    """``1 pod``, ``2 pods``: the counts in messages."""
    return f"{count} {word if count == 1 else (plural or word + 's')}"


@dataclass(frozen=True)
class Outcome:
    """What a check function returns: a ``Result`` without the check's name.

    ``hint=None`` means the check's standing hint (for a warning or a
    failure); ``""`` means no hint at all.
    """

    status: Status
    message: str
    hint: str | None = None
    details: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def outcome(
    status: Status,
    message: str,
    hint: str | None = None,
    details: Sequence[str] = (),
    **data: Any,
) -> Outcome:
    """An outcome of any status; ``data`` goes into ``-o json`` as the check's ``data``."""
    return Outcome(status, message, hint, tuple(details), MappingProxyType(data))


def passed(message: str, details: Sequence[str] = (), **data: Any) -> Outcome:
    """A pass."""
    return outcome("pass", message, "", details, **data)


def warned(
    message: str, hint: str | None = None, details: Sequence[str] = (), **data: Any
) -> Outcome:
    """A warning; without ``hint``, the check's standing hint."""
    return outcome("warn", message, hint, details, **data)


def failed(
    message: str, hint: str | None = None, details: Sequence[str] = (), **data: Any
) -> Outcome:
    """A failure; without ``hint``, the check's standing hint."""
    return outcome("fail", message, hint, details, **data)


def skipped(message: str) -> Outcome:
    """Nothing to look at (an earlier check found nothing to follow)."""
    return outcome("skip", message, "")


@dataclass(frozen=True, eq=False)
class Discovery(Generic[T]):
    """A step that reads the cluster and fills the context's field ``name``.

    ``needs`` are the steps whose output it reads; the runner runs each step
    at most once, the first time a check needs it.
    """

    name: str
    what: str  # for people: "the webhook configuration"
    find: Callable[[Cluster, Context], T]
    needs: tuple[Discovery[Any], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in {f.name for f in fields(Context)}:
            raise ValueError(f"discovery {self.name!r} names no field of Context")


@dataclass(frozen=True, eq=False)
class Check:
    """One line of ``check``'s output.

    ``hint`` is the standing hint, given to a warning or failure whose
    outcome names none. When a ``fatal`` check fails, every check after it is
    skipped with ``skip_message``.
    """

    name: str
    run: Callable[[Context], Outcome]
    hint: str = ""
    needs: tuple[Discovery[Any], ...] = ()
    fatal: bool = False
    skip_message: str = ""

    def __post_init__(self) -> None:
        if self.fatal and not self.skip_message:
            raise ValueError(f"fatal check {self.name} needs a skip_message for the others")

    def __call__(self, context: Context) -> Result:
        """Run the check over ``context`` (unguarded: the runner guards it)."""
        found = self.run(context)
        hint = found.hint
        if hint is None:
            hint = self.hint if found.status in ("warn", "fail") else ""
        return Result(self.name, found.status, found.message, hint, found.details, found.data)


def check(
    name: str,
    *,
    hint: str = "",
    needs: Sequence[Discovery[Any]] = (),
    fatal: bool = False,
    skip_message: str = "",
) -> Callable[[Callable[[Context], Outcome]], Check]:
    """Declare a check: ``@check("replicas", hint="...", needs=[ENDPOINTS])`` on its function."""

    def declare(run: Callable[[Context], Outcome]) -> Check:
        return Check(name, run, hint, tuple(needs), fatal, skip_message)

    return declare
