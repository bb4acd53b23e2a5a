"""Where admission gets a namespace's labels and annotations.

Every admission needs the labels and annotations of the pod's namespace, and
the apiserver does not send them. Asking the API server on every admission
would put a network round trip (and the API server's health) on the hot path,
so a source answers from memory (``cached``) and only on a miss may block on
I/O (``fetch``), which the service runs in a worker thread: the ``kubernetes``
client is synchronous and must never run in the event loop.

Three sources share that interface:

- ``StaticNamespaces``: a fixed set (or none: every namespace is unlabelled);
- ``FileNamespaces``: Namespace objects from a file, e.g. ``kubectl get ns -o yaml``;
- ``webhook.cluster.namespace_cache.KubeNamespaceCache``: a list+watch cache of the cluster.

Choosing one is ``serve``'s business
(``webhook.service.server.namespace_source_from_args``), which imports the
watch-backed cache only when it chooses it. This module does not import
``kubernetes``, so the offline CLI and the engine never pay for (or depend on)
the client. The types all sources share (``NamespaceInfo``,
``NamespaceSource``, ``Freshness``, the errors, ``lookup``) live in
``webhook.contract.namespaces`` and are re-exported here, so the watch-backed
cache depends on them without depending on this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from webhook.contract.namespaces import (
    Freshness,
    NamespaceInfo,
    NamespaceSource,
    NamespaceSourceError,
    NamespaceUnavailable,
    lookup,
)
from webhook.manifests.documents import ManifestError, is_list, parse_documents
from webhook.manifests.files import DOCUMENTS_LIMIT, FileError, read_file

__all__ = [
    "FileNamespaces",
    "Freshness",
    "NamespaceInfo",
    "NamespaceSource",
    "NamespaceSourceError",
    "NamespaceUnavailable",
    "NamespacesFileError",
    "StaticNamespaces",
    "load_namespaces_file",
    "lookup",
    "parse_namespaces",
]


class NamespacesFileError(NamespaceSourceError, ValueError):
    """The namespaces file cannot be used; the message names the file and the place."""


class StaticNamespaces:
    """A fixed set of namespaces, ready at once; with none, every namespace is unlabelled."""

    def __init__(self, namespaces: Mapping[str, NamespaceInfo] | None = None) -> None:
        self._namespaces: Mapping[str, NamespaceInfo] = MappingProxyType(dict(namespaces or {}))

    @property
    def namespaces(self) -> Mapping[str, NamespaceInfo]:
        """Every namespace this source knows, by name."""
        return self._namespaces

    def cached(self, name: str) -> NamespaceInfo | None:
        """The namespace if it is in the set."""
        return self._namespaces.get(name)

    def fetch(self, name: str) -> NamespaceInfo | None:
        """Nothing beyond the set: a miss means the namespace has no labels."""
        return self._namespaces.get(name)

    def is_ready(self) -> bool:
        """Always ready: there is nothing to sync."""
        return True

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    def freshness(self) -> Freshness | None:
        """None: a fixed set is never out of date, there is nothing to measure."""
        return None

    def describe(self) -> str:
        """One line for the log."""
        if not self._namespaces:
            return "no namespace source: namespaces have no labels or annotations"
        return f"{len(self._namespaces)} fixed namespaces"


class FileNamespaces(StaticNamespaces):
    """Namespaces read once from a file (see ``load_namespaces_file``).

    The file is read in the constructor rather than in ``start`` so that a bad
    file stops ``serve`` with a clear message before it binds its port. It is
    not re-read: the file stands in for a cluster in local runs and tests.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(load_namespaces_file(path))

    def describe(self) -> str:
        """One line for the log."""
        return f"namespaces file {self.path} ({len(self.namespaces)} namespaces)"


def load_namespaces_file(path: Path) -> dict[str, NamespaceInfo]:
    """Namespaces from a file: a Namespace, a List, multi-document YAML, or JSON.

    Accepts what the CLI and ``/preview`` accept (same parser), plus the
    output of ``kubectl get ns -o yaml``. Every object must be a Namespace with
    a name, and a name may appear once. Raises ``NamespacesFileError`` with a
    one-line ``<file>: document N[: items[M]]: <problem>`` message.
    """
    origin = str(path)
    try:
        data = read_file(path, limit=DOCUMENTS_LIMIT)
    except FileError as err:
        raise NamespacesFileError(str(err)) from None
    return parse_namespaces(data, origin=origin)


def parse_namespaces(data: bytes | str, *, origin: str) -> dict[str, NamespaceInfo]:
    """Namespaces from file contents; ``origin`` names the input in errors.

    Walks the documents itself (with the shared parser) rather than using the
    flattened ``load_objects`` so that an error can say which document, and
    which item of a List, is wrong.
    """
    try:
        documents = parse_documents(data, origin=origin)
    except ManifestError as err:
        raise NamespacesFileError(str(err)) from None
    found: dict[str, NamespaceInfo] = {}
    places: dict[str, str] = {}
    for number, document in enumerate(documents, start=1):
        where = f"{origin}: document {number}"
        for place, obj in _objects(document, where=where):
            info = _namespace(obj, where=place)
            if info.name in found:
                raise NamespacesFileError(
                    f"{place}: namespace {info.name!r} is already defined at"
                    f" {places[info.name].removeprefix(origin + ': ')}"
                )
            found[info.name] = info
            places[info.name] = place
    return found


def _objects(document: Any, *, where: str) -> list[tuple[str, Any]]:
    """The objects in one document with their places; a List contributes its items."""
    if isinstance(document, dict) and is_list(document):
        items = document.get("items")
        if items is None:  # `kubectl get ns -o yaml` on an empty selection
            return []
        if not isinstance(items, list):
            raise NamespacesFileError(f"{where}: items must be a list")
        return [(f"{where}: items[{index}]", item) for index, item in enumerate(items)]
    return [(where, document)]


def _namespace(obj: Any, *, where: str) -> NamespaceInfo:
    if not isinstance(obj, dict):
        raise NamespacesFileError(f"{where}: expected a Namespace object, got {_kind_of(obj)}")
    kind = obj.get("kind")
    if kind != "Namespace":
        shown = f"kind {kind!r}" if isinstance(kind, str) else "an object without a kind"
        raise NamespacesFileError(f"{where}: expected a Namespace, got {shown}")
    try:
        return NamespaceInfo.from_object(obj)
    except ValueError as err:
        raise NamespacesFileError(f"{where}: {err}") from None


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return "null" if value is None else type(value).__name__
