"""What every namespace source hands out, and how it fails.

A module of its own so that dependencies point one way: ``webhook.cluster.namespaces_file``
(the fixed and file sources) and ``webhook.cluster.namespace_cache`` (the
watch-backed cache) both import this and never each other; ``serve``
(``webhook.service.server``) chooses among them. ``webhook.cluster.namespaces_file`` re-exports
these names; code that needs neither the fixed nor the file sources (the
watch-backed cache, ``check``) may take them from here. Nothing here imports
``kubernetes`` or another source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

_EMPTY: Mapping[str, str] = MappingProxyType({})

# What ``kubernetes.config.load_incluster_config`` needs; checked here so that
# deciding on a source does not import the client.


class NamespaceSourceError(Exception):
    """A namespace source cannot be set up (bad file, bad kubeconfig); one-line message."""


class NamespaceUnavailable(Exception):
    """The source cannot say whether the namespace exists or what it holds.

    Raised by ``fetch`` for every failure other than "no such namespace": the
    API server unreachable, too slow, answering 5xx/403, or with a garbled
    body. Admission then refuses the pod (fail closed, as ``failurePolicy:
    Fail`` intends) rather than admitting it unmeshed; the message is one
    line and names the namespace.
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


@dataclass(frozen=True, slots=True)
class Freshness:
    """How current a watch-backed source is; rendered in ``/metrics`` at scrape time.

    ``age_seconds``: seconds since the source last knew it was in sync (its
    last successful list, or the last watch event or BOOKMARK received);
    before its first list, seconds since it was started. ``reconnects``: watch
    requests after the first since start (each server-side timeout renews the
    watch, so a slow steady rise is normal; a steep one is not). ``relists``:
    successful lists after the first (the server had forgotten our place).
    """

    age_seconds: float
    reconnects: int
    relists: int


@runtime_checkable
class NamespaceSource(Protocol):
    """Namespace labels and annotations for admission.

    Call ``cached`` first on the event loop; only on a miss call ``fetch`` in a
    worker thread (``lookup`` does both, for code already in a thread).
    ``start``/``stop`` belong in the app's lifespan, ``is_ready`` in
    ``/readyz`` and ``freshness`` in ``/metrics``.
    """

    def cached(self, name: str) -> NamespaceInfo | None:
        """The namespace as last known, from memory; never blocks, never does I/O."""
        ...

    def fetch(self, name: str) -> NamespaceInfo | None:
        """Ask the source itself; may block for a bounded time. ``None``: no such namespace.

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

    def freshness(self) -> Freshness | None:
        """How current the source is; ``None`` for sources that do not sync (static, file)."""
        ...


@runtime_checkable
class WatchedSource(Protocol):
    """A ``NamespaceSource`` kept current by a watch, which can be waited on instead of read.

    kube-apiserver never sends a pod whose namespace does not exist, and a
    new namespace reaches a live watch within moments: so a namespace the
    source lacks is better awaited than read (a read per unknown name would
    let any client turn reviews into API requests).
    """

    def on_arrival(self, name: str, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` (from another thread) once ``name`` arrives or the watch stops.

        Returns a canceller, or ``None`` when waiting makes no sense now (read instead).
        """
        ...

    def known_absent(self, name: str) -> bool:
        """Whether the source read ``name`` as missing moments ago and has not seen it since."""
        ...


def lookup(source: NamespaceSource, name: str) -> NamespaceInfo | None:
    """The namespace from memory, or from the source itself on a miss. Blocking.

    The one lookup for code already running in a worker thread (``/preview``,
    a fetch scheduled with ``anyio.to_thread``). On the event loop call
    ``cached`` first and run this in a thread only when it misses. ``None``:
    no such namespace; raises ``NamespaceUnavailable`` when the source cannot
    tell.
    """
    found = source.cached(name)
    return found if found is not None else source.fetch(name)
