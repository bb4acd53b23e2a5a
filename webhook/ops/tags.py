"""``sidecar-injector tag``: movable revision names, kept in the revisions' own selectors.

A tag is one more ``sidecar.mesh.io/rev`` value that a revision's selectors
answer to (``webhook.manifests.revisions``): in webhook mode the ``In``
expressions of its webhook configuration's ``rev-pod`` and ``rev-namespace``
webhooks, in policy mode those of its bindings. Setting a tag on another
revision adds it there first and only then takes it from the revision that
had it: for a moment both answer to it, and a pod created then is injected
by whichever the API server calls first (the other one's ``matchConditions``,
or its policy, see it already injected); the other order would leave such a
pod unmeshed. Namespaces are never touched: every namespace labelled with
the tag follows it.

Writes replace each object as read (its ``resourceVersion`` with it), so a
change made meanwhile makes the API server answer 409; the command then
reads everything again and carries on from where the cluster is, a few
times, before giving up with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from webhook.cluster.reader import Cluster, ClusterError
from webhook.contract import constants
from webhook.engine.values import REVISION_NAME_RULE, is_revision_name, shorten
from webhook.ops.installed import Installed, Revision, find_installed

FIELD_MANAGER: Final = "sidecar-injector-tag"
ATTEMPTS: Final = 3


class TagError(Exception):
    """The tag cannot be set or removed; one line saying why."""


@dataclass(frozen=True)
class Change:
    """What ``set`` or ``remove`` did."""

    tag: str
    revision: str | None  # where it points now (None: removed)
    previous: tuple[str, ...]  # the revisions that had it before
    unchanged: bool = False


def check_tag(tag: str) -> None:
    """A tag is a revision-like name that no revision can have: never ``default``."""
    if not is_revision_name(tag):
        raise TagError(f"{shorten(tag, 80)} is not a tag name ({REVISION_NAME_RULE})")
    if tag == constants.DEFAULT_REVISION:
        raise TagError(
            f"{tag} names the revision-less install and cannot be a tag; pick another name"
        )


def set_tag(cluster: Cluster, tag: str, revision: str) -> Change:
    """Point ``tag`` at ``revision`` (added there, then taken from any other revision)."""
    check_tag(tag)
    for _ in range(ATTEMPTS):
        installed = _installed(cluster)
        if tag in installed.revisions:
            raise TagError(
                f"{tag} is the name of an installed revision, and a tag may not shadow it"
            )
        target = installed.revisions.get(revision)
        if target is None:
            raise TagError(f"no revision {revision} is installed ({_names(installed)})")
        previous = tuple(r.name for r in installed.revisions.values() if tag in r.tags)
        others = [r for r in installed.revisions.values() if tag in r.tags and r is not target]
        if not others and tag in target.tags:
            return Change(tag, revision, previous, unchanged=True)
        try:
            if tag not in target.tags:
                _write(cluster, target, add=tag)
            for other in others:
                _write(cluster, other, remove=tag)
        except _Conflict:
            continue
        return Change(tag, revision, previous)
    raise _gave_up(tag)


def remove_tag(cluster: Cluster, tag: str) -> Change:
    """Take ``tag`` from every revision that answers to it."""
    check_tag(tag)
    for _ in range(ATTEMPTS):
        installed = _installed(cluster)
        owners = [r for r in installed.revisions.values() if tag in r.tags]
        if not owners:
            if tag in installed.revisions:
                raise TagError(f"{tag} is a revision, not a tag")
            raise TagError(f"no revision has the tag {tag}")
        try:
            for owner in owners:
                _write(cluster, owner, remove=tag)
        except _Conflict:
            continue
        return Change(tag, None, tuple(o.name for o in owners))
    raise _gave_up(tag)


def list_tags(cluster: Cluster) -> Installed:
    """The installed revisions and their tags."""
    return _installed(cluster)


class _Conflict(Exception):
    """An object changed between the read and the write."""


def _installed(cluster: Cluster) -> Installed:
    try:
        return find_installed(cluster)
    except ClusterError as err:
        raise TagError(f"cannot read the installed revisions: {err}") from None


def _names(installed: Installed) -> str:
    names = ", ".join(installed.revisions)
    return f"installed: {names}" if names else "none is installed"


def _write(
    cluster: Cluster, revision: Revision, *, add: str | None = None, remove: str | None = None
) -> None:
    """Replace each of ``revision``'s selecting objects with the tag added or removed."""
    touched = [o for o in revision.objects if o.values()]
    if add is not None and not touched:
        raise TagError(
            f"revision {revision.name}'s selectors have no {constants.REVISION_LABEL} In"
            " expression to add a tag to; install it again (the Helm chart or manifests/)"
        )
    for obj in touched:
        changed = obj.changed(add=add, remove=remove)
        if changed == obj.obj:
            continue
        try:
            cluster.write("PUT", obj.path, changed, field_manager=FIELD_MANAGER)
        except ClusterError as err:
            if err.status == 409:
                raise _Conflict from None
            raise TagError(f"cannot update {obj.kind} {obj.name}: {err}") from None


def _gave_up(tag: str) -> TagError:
    return TagError(
        f"the revisions kept changing while tag {tag} was being moved ({ATTEMPTS} attempts);"
        " run the command again"
    )
