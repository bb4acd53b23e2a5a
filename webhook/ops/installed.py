"""The injector revisions installed in a cluster, as their selectors say, and their tags.

A revision is found by the ``sidecar.mesh.io/rev`` label on the objects that
select its pods: its MutatingWebhookConfiguration in webhook mode, its
admission policy bindings in policy mode. What it answers to is what those
selectors hold (``webhook.manifests.revisions``): the values of their
``sidecar.mesh.io/rev In`` expressions, its own name and its tags. Nothing
else records a tag, so a tag can never disagree with what the API server
does.

Read through ``webhook.cluster.reader.Cluster``: bounded in bytes and time.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from webhook.cluster.reader import Cluster, ClusterError
from webhook.contract import constants
from webhook.engine.values import is_revision_name
from webhook.manifests.revisions import revision_values, with_values

_GROUP: Final = "/apis/admissionregistration.k8s.io/v1"
# The kinds whose objects select a revision's pods, and where they are listed.
KINDS: Final = {
    "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
    "MutatingAdmissionPolicyBinding": "mutatingadmissionpolicybindings",
    "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
}
# Revisions are few; a list of more objects than this is not an install.
MAX_OBJECTS: Final = 200


@dataclass
class Selecting:
    """One object that selects a revision's pods, as read (with its resourceVersion)."""

    kind: str
    obj: dict[str, Any]

    @property
    def name(self) -> str:
        """The object's name."""
        return str((self.obj.get("metadata") or {}).get("name", ""))

    @property
    def path(self) -> str:
        """Where the API server keeps it."""
        return f"{_GROUP}/{KINDS[self.kind]}/{quote(self.name, safe='')}"

    def selectors(self) -> Iterator[tuple[MutableMapping[str, Any], str]]:
        """Each (holder, key) of a label selector in the object: every webhook's two, or the
        binding's ``matchResources`` two."""
        if self.kind == "MutatingWebhookConfiguration":
            holders = [h for h in self.obj.get("webhooks") or [] if isinstance(h, dict)]
        else:
            resources = (self.obj.get("spec") or {}).get("matchResources")
            holders = [resources] if isinstance(resources, dict) else []
        for holder in holders:
            for key in ("namespaceSelector", "objectSelector"):
                if isinstance(holder.get(key), dict):
                    yield holder, key

    def values(self) -> list[str]:
        """The ``rev`` values its selectors answer to, in order, each once."""
        found: list[str] = []
        for holder, key in self.selectors():
            for value in revision_values(holder[key]) or []:
                if value not in found:
                    found.append(value)
        return found

    def changed(self, *, add: str | None = None, remove: str | None = None) -> dict[str, Any]:
        """A copy of the object whose ``rev In`` expressions gain ``add`` and lose ``remove``."""
        copy = Selecting(self.kind, deepcopy(self.obj))
        for holder, key in copy.selectors():
            old = revision_values(holder[key])
            if old is None:
                continue
            new = [v for v in old if v != remove]
            if add is not None and add not in new:
                new.append(add)
            holder[key] = with_values(holder[key], new)
        return copy.obj


@dataclass
class Revision:
    """One installed revision: its name, how it is installed, and what it answers to."""

    name: str
    objects: list[Selecting] = field(default_factory=list)

    @property
    def mode(self) -> str:
        """``webhook`` or ``policy`` (``webhook and policy`` for an install of both)."""
        kinds = {o.kind for o in self.objects}
        modes = []
        if "MutatingWebhookConfiguration" in kinds:
            modes.append("webhook")
        if kinds - {"MutatingWebhookConfiguration"}:
            modes.append("policy")
        return " and ".join(modes)

    @property
    def values(self) -> list[str]:
        """Every ``rev`` value its objects' selectors answer to."""
        found: list[str] = []
        for obj in self.objects:
            found += [v for v in obj.values() if v not in found]
        return found

    @property
    def tags(self) -> list[str]:
        """Its values other than its own name."""
        return [v for v in self.values if v != self.name]


@dataclass
class Installed:
    """The revisions found, by name, and objects labelled with a value that is no name."""

    revisions: dict[str, Revision] = field(default_factory=dict)
    unnamed: list[str] = field(default_factory=list)  # "KIND NAME: its label"

    def owner_of(self, value: str) -> Revision | None:
        """The revision that answers to ``value`` (its name or a tag), if one does."""
        named = self.revisions.get(value)
        if named is not None:
            return named
        return next((r for r in self.revisions.values() if value in r.tags), None)

    def tags(self) -> dict[str, list[str]]:
        """Each tag and the revisions answering to it (more than one only while a move is
        half done, or after a hand edit)."""
        found: dict[str, list[str]] = {}
        for revision in sorted(self.revisions.values(), key=lambda r: r.name):
            for tag in revision.tags:
                found.setdefault(tag, []).append(revision.name)
        return dict(sorted(found.items()))


def find_installed(cluster: Cluster, *, kinds: tuple[str, ...] = tuple(KINDS)) -> Installed:
    """Every object of ``kinds`` labelled ``sidecar.mesh.io/rev``, grouped by revision.

    A kind the API server does not serve (policy mode before 1.36) has none;
    any other read error is a ``ClusterError``.
    """
    found = Installed()
    for kind in kinds:
        for obj in _labelled(cluster, kind):
            label = ((obj.get("metadata") or {}).get("labels") or {}).get(constants.REVISION_LABEL)
            item = Selecting(kind, obj)
            if not isinstance(label, str) or not is_revision_name(label):
                found.unnamed.append(f"{kind} {item.name}: {label!r}")
                continue
            found.revisions.setdefault(label, Revision(label)).objects.append(item)
    found.revisions = dict(sorted(found.revisions.items()))
    return found


def _labelled(cluster: Cluster, kind: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    try:
        for obj in cluster.list(
            f"{_GROUP}/{KINDS[kind]}", query={"labelSelector": constants.REVISION_LABEL}
        ):
            items.append(obj)
            if len(items) > MAX_OBJECTS:
                raise ClusterError(
                    f"more than {MAX_OBJECTS} {KINDS[kind]} carry the revision label"
                )
    except ClusterError as err:
        if err.status == 404 and kind != "MutatingWebhookConfiguration":
            return []  # the API server has no such kind: no policy mode here
        raise
    return items
