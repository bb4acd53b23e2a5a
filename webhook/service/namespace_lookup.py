"""How the service finds namespaces: one adapter over the namespace source, for every endpoint.

``/mutate`` (on the event loop) and ``/preview`` (in a worker thread) look
namespaces up the same way: memory first, then the source itself, whose
``fetch`` blocks (the ``kubernetes`` client) and so never runs on the loop.
They differ in what a failed or late read means: ``/mutate`` refuses the
pod (``webhook.service.admission.admit`` fails closed), while a preview
changes nothing and goes on with an unlabelled namespace and a warning.

No client can turn reviews into API requests (docs/service.md, "Namespaces:
never unmeshed by accident"). Anyone who reaches the Service can send
reviews naming any namespace, so ``/mutate``'s reads are bounded three ways,
each by the client's source address, which travels with the request
(:meth:`SourceLookup.for_client`):

- **Awaited, not read.** A namespace the source does not know is awaited on
  the watch while it is live (``WatchedSource``), at most
  :data:`ARRIVAL_WAIT_SECONDS`: kube-apiserver never sends a pod whose
  namespace does not exist, and a new one reaches the watch within moments.
  So a genuine review for a namespace created a moment ago needs no read,
  whatever else is being read.
- **Absent remembered.** A name a read found missing moments ago, and that
  the live watch has not delivered since, is refused at once rather than
  read again (fail closed: a pod is never admitted on a remembered absence).
- **Reads per client.** At most :data:`READS_PER_CLIENT` distinct namespaces
  are read for one client at a time (callers of a name its client is reading
  already share that read); one more is refused at once. Each read waits at
  most the source's fetch timeout (2 s), so a client causes at most that
  many reads every 2 s, and cannot take all of the cache's fetch threads.

A refusal is a ``NamespaceUnavailable``: the pod is refused with a 5xx-class
code, and the apiserver's controllers retry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Final

import anyio.to_thread

from webhook.cluster.namespaces_file import NamespaceSource, NamespaceUnavailable
from webhook.contract.namespaces import WatchedSource
from webhook.engine import NamespaceLike
from webhook.service.metrics import Metrics

# How long a review waits for a live watch to deliver a namespace the cache
# does not know, before reading it. A namespace created just before its first
# pod reaches the watch within moments; with a read after it (at most the
# fetch timeout, 2 s), a review still ends well inside the webhook's timeout
# (5 s in the install).
ARRIVAL_WAIT_SECONDS: Final = 1.0
# Distinct namespaces read for one client at once. kube-apiserver needs reads
# only for namespaces the watch cannot answer for (a label set a moment ago,
# a namespace too large to cache, a watch that is down), one or two at a
# time; four leaves room, and one client can hold at most half of the
# cache's eight fetch threads.
READS_PER_CLIENT: Final = 4


class SourceLookup:
    """``admission.NamespaceLookup`` over a ``NamespaceSource``, plus budgeted blocking reads.

    Every read of the source leaves through :meth:`read`, whoever asks.
    ``/mutate`` reaches it through :meth:`fetch`, per client (the module
    docstring says how those reads are bounded), by way of a per-request
    view (:meth:`for_client`); ``/preview`` through :class:`BudgetedReads`
    (previews run one at a time, so their reads are bounded already).
    ``arrival_wait`` and ``reads_per_client`` default to the module's bounds.
    """

    def __init__(
        self,
        source: NamespaceSource,
        metrics: Metrics,
        *,
        arrival_wait: float = ARRIVAL_WAIT_SECONDS,
        reads_per_client: int = READS_PER_CLIENT,
    ) -> None:
        self._source = source
        self._watched = source if isinstance(source, WatchedSource) else None
        self._metrics = metrics
        self._arrival_wait = arrival_wait
        self._reads_per_client = reads_per_client
        # Per client, the namespaces being read for it and how many of its
        # requests wait on each (only touched on the event loop).
        self._reading: dict[str | None, dict[str, int]] = {}

    def for_client(self, client: str | None) -> ClientLookup:
        """The lookups of one request from ``client`` (its source address; None: unknown)."""
        return ClientLookup(self, client)

    def cached(self, name: str) -> NamespaceLike | None:
        """From memory; cheap enough for the event loop."""
        return self._source.cached(name)

    async def fetch(
        self, name: str, *, reason: str, client: str | None = None
    ) -> NamespaceLike | None:
        """The namespace as the source has it now, for ``/mutate`` (on the event loop).

        ``reason`` is ``miss`` (not cached: awaited on the watch first) or
        ``recheck`` (cached with labels that skip the pod: read). Reads run
        in a worker thread, bounded for ``client``, counted by reason and
        outcome. Raises ``NamespaceUnavailable`` when the source cannot tell,
        or when the read is refused (see the module docstring).
        """
        if reason == "miss" and self._watched is not None:
            arrived = await self._arrival(self._watched, name)
            if arrived is not None:
                return arrived
            if self._watched.known_absent(name):
                self._metrics.namespace_read_refused("absent")
                raise NamespaceUnavailable(
                    f"namespace {name}: the API server said moments ago that it does not exist,"
                    " and the namespace watch has not delivered it since"
                )
        with self._reading_for(client, name):
            try:
                found = await anyio.to_thread.run_sync(self.read, name)
            except NamespaceUnavailable:
                self._metrics.namespace_fetch(reason, "unavailable")
                raise
        self._metrics.namespace_fetch(reason, "found" if found is not None else "absent")
        return found

    async def _arrival(self, watched: WatchedSource, name: str) -> NamespaceLike | None:
        """``name`` once the live watch delivers it, within the wait; None if it did not."""
        loop = asyncio.get_running_loop()
        delivered = asyncio.Event()

        def wake() -> None:  # called from the watch's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(delivered.set)

        cancel = watched.on_arrival(name, wake)
        if cancel is None:
            return None  # not live, known to need a read, or too many waiting
        try:
            found = self._source.cached(name)  # it may have come just before
            if found is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(delivered.wait(), self._arrival_wait)
                found = self._source.cached(name)
        finally:
            cancel()
        self._metrics.namespace_wait("arrived" if found is not None else "not_arrived")
        return found

    @contextlib.contextmanager
    def _reading_for(self, client: str | None, name: str) -> Iterator[None]:
        """Count a read of ``name`` for ``client``, or refuse it past the client's bound."""
        reading = self._reading.setdefault(client, {})
        if name not in reading and len(reading) >= self._reads_per_client:
            self._metrics.namespace_read_refused("client_busy")
            raise NamespaceUnavailable(
                f"namespace {name}: {len(reading)} other namespaces are being read for this"
                f" client ({client or 'unknown address'}) already"
            )
        reading[name] = reading.get(name, 0) + 1
        try:
            yield
        finally:
            if reading[name] > 1:
                reading[name] -= 1
            else:
                del reading[name]
                if not reading:
                    self._reading.pop(client, None)

    def read(self, name: str) -> NamespaceLike | None:
        """The source's own answer. Blocking: call it from a worker thread.

        ``None``: no such namespace; raises ``NamespaceUnavailable`` when the
        source cannot tell.
        """
        return self._source.fetch(name)

    def within(self, seconds: float) -> BudgetedReads:
        """Blocking lookups for one request that may spend ``seconds`` reading (see
        :class:`BudgetedReads`); the clock starts now."""
        return BudgetedReads(self, seconds)


class ClientLookup:
    """``admission.NamespaceLookup`` for one request: its reads are its client's."""

    __slots__ = ("_client", "_lookup")

    def __init__(self, lookup: SourceLookup, client: str | None) -> None:
        self._lookup = lookup
        self._client = client

    def cached(self, name: str) -> NamespaceLike | None:
        """From memory."""
        return self._lookup.cached(name)

    async def fetch(self, name: str, *, reason: str) -> NamespaceLike | None:
        """:meth:`SourceLookup.fetch` for this request's client."""
        return await self._lookup.fetch(name, reason=reason, client=self._client)


class BudgetedReads:
    """One request's lookups, already in a worker thread, with a time budget for reads.

    Each lookup answers from memory, or reads the namespace while the budget
    lasts. Once ``seconds`` have passed, namespaces not in memory are
    treated as having no labels; so is one the source cannot read. Either
    way a line in :attr:`warnings` says so, naming the namespace: what the
    request goes on with is not what the cluster would decide. (Used by
    ``/preview``, whose reads are not counted in the fetch metrics, which
    are about admissions.)
    """

    def __init__(self, lookup: SourceLookup, seconds: float) -> None:
        self._lookup = lookup
        self.seconds = seconds
        self._reads_end = time.monotonic() + seconds
        self.warnings: list[str] = []

    def __call__(self, name: str) -> NamespaceLike | None:
        """The namespace ``name`` (``None``: unknown, or treated as having no labels)."""
        found = self._lookup.cached(name)
        if found is not None:
            return found
        if time.monotonic() >= self._reads_end:
            self.warnings.append(
                f"namespace {name} was not read (this preview's {self.seconds:g} s"
                " for namespace reads are spent); treated as having no labels"
            )
            return None
        try:
            return self._lookup.read(name)
        except NamespaceUnavailable as err:
            self.warnings.append(
                f"namespace {name} could not be read ({err}); treated as having no labels"
            )
            return None
