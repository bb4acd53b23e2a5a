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
- ``webhook.kube_namespaces.KubeNamespaceCache``: a list+watch cache of the cluster.

This module does not import ``kubernetes``; ``namespace_source_from_args``
imports the watch-backed cache only when it chooses it, so the offline CLI and
the engine never pay for (or depend on) the client.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from webhook.manifests import ManifestError, is_list, parse_documents

_EMPTY: Mapping[str, str] = MappingProxyType({})

# What ``kubernetes.config.load_incluster_config`` needs; checked here so that
# deciding on a source does not import the client.
_IN_CLUSTER_ENV = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
_IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class NamespaceSourceError(Exception):
    """A namespace source cannot be set up (bad file, bad kubeconfig); one-line message."""


class NamespacesFileError(NamespaceSourceError, ValueError):
    """The namespaces file cannot be used; the message names the file and the place."""


class NamespaceUnavailable(Exception):
    """The source cannot say whether the namespace exists (e.g. the API server is down).

    Admission then treats the namespace as unlabelled and adds a warning
    rather than failing the request: the webhook's own failure policy is for
    the webhook being down, not for one lookup.
    """


def _string_map(value: Any, *, what: str) -> Mapping[str, str]:
    """An immutable copy of a labels/annotations map; ``None`` (as in ``labels: null``) is empty."""
    if value is None:
        return _EMPTY
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a map, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            # The API server only stores strings; an unquoted `true` or `8080`
            # in a hand-written file would silently mean something else.
            raise ValueError(f"{what}.{key}: expected a string, got {type(item).__name__}")
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """What admission needs of a Namespace; immutable so a shared cache can hand it out."""

    name: str
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> NamespaceInfo:
        """Read a Namespace object (a plain dict); missing or null metadata maps are empty.

        Raises ``ValueError`` naming the field when the object has no usable
        ``metadata.name`` or holds non-string labels/annotations.
        """
        meta = obj.get("metadata")
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise ValueError(f"metadata: expected a map, got {type(meta).__name__}")
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("metadata.name is missing")
        return cls(
            name=name,
            labels=_string_map(meta.get("labels"), what="metadata.labels"),
            annotations=_string_map(meta.get("annotations"), what="metadata.annotations"),
        )


@runtime_checkable
class NamespaceSource(Protocol):
    """Namespace labels and annotations for admission.

    Call ``cached`` first on the event loop; only on a miss call ``fetch`` in a
    worker thread. ``start``/``stop`` belong in the app's lifespan and
    ``is_ready`` in ``/readyz``.
    """

    def cached(self, name: str) -> NamespaceInfo | None:
        """The namespace as last known, from memory; never blocks, never does I/O."""
        ...

    def fetch(self, name: str) -> NamespaceInfo | None:
        """Ask the source itself; may block briefly. ``None``: no such namespace.

        Raises ``NamespaceUnavailable`` when the source cannot answer.
        """
        ...

    def is_ready(self) -> bool:
        """True once the source has synced (and stays true while it serves from memory)."""
        ...

    def start(self) -> None:
        """Begin syncing (idempotent)."""
        ...

    def stop(self) -> None:
        """Stop syncing and release connections; returns promptly."""
        ...

    def describe(self) -> str:
        """One line for the startup log: what the source is and where it reads from."""
        ...


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
        data = path.read_bytes()
    except OSError as err:
        raise NamespacesFileError(f"{origin}: cannot read: {err.strerror or err}") from None
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


def running_in_cluster() -> bool:
    """Whether this process runs in a pod with a service account (what in-cluster config needs)."""
    return all(os.environ.get(name) for name in _IN_CLUSTER_ENV) and _IN_CLUSTER_TOKEN.is_file()


def namespace_source_from_args(
    *,
    namespaces_file: Path | None,
    kubeconfig: Path | None,
    in_cluster: bool | None = None,
) -> NamespaceSource:
    """Choose the namespace source for ``serve``; the result is not started yet.

    In order:

    1. ``--namespaces-file``: the file, even in a cluster. A user who passes a
       file means it (e.g. to try settings against a live cluster without
       labelling its namespaces).
    2. In a cluster (``in_cluster``; detected from the service account when
       ``None``), with ``--kubeconfig``, or with ``$KUBECONFIG`` set: a
       watch-backed cache of the cluster's Namespaces (no API call per
       admission). ``~/.kube/config`` alone does not count: a local ``serve``
       should not quietly start watching whatever cluster it points at.
    3. Otherwise no source: unknown namespaces have no labels or annotations.

    Raises ``NamespaceSourceError`` (``NamespacesFileError`` for the file)
    with a one-line message when the chosen source cannot be set up.
    """
    if namespaces_file is not None:
        return FileNamespaces(namespaces_file)
    if in_cluster is None:
        in_cluster = running_in_cluster()
    if in_cluster or kubeconfig is not None or os.environ.get("KUBECONFIG"):
        # Imported here so that choosing a file or no source never imports the
        # kubernetes client (slow to import, and not needed offline).
        from webhook.kube_namespaces import KubeNamespaceCache  # noqa: PLC0415

        return KubeNamespaceCache.from_environment(kubeconfig, in_cluster=in_cluster)
    return StaticNamespaces()
