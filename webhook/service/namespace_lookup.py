"""How the service finds namespaces: one adapter over the namespace source, for every endpoint.

``/mutate`` (on the event loop) and ``/preview`` (in a worker thread) look
namespaces up the same way: memory first, then the source itself, whose
``fetch`` blocks (the ``kubernetes`` client) and so never runs on the loop.
They differ in what a failed or late read means: ``/mutate`` refuses the
pod (``webhook.service.admission.admit`` fails closed), while a preview
changes nothing and goes on with an unlabelled namespace and a warning.
"""

from __future__ import annotations

import time

import anyio.to_thread

from webhook.cluster.namespaces_file import NamespaceSource, NamespaceUnavailable
from webhook.engine import NamespaceLike
from webhook.service.metrics import Metrics


class SourceLookup:
    """``admission.NamespaceLookup`` over a ``NamespaceSource``, plus budgeted blocking reads.

    Every read of the source leaves through :meth:`read`, whoever asks: a
    bound on reads per client, or waiting for the watch to deliver a
    namespace it does not know yet instead of reading it, belongs there.
    (The client would reach it the way a preview's budget does, through a
    per-request view like :class:`BudgetedReads`.)
    """

    def __init__(self, source: NamespaceSource, metrics: Metrics) -> None:
        self._source = source
        self._metrics = metrics

    def cached(self, name: str) -> NamespaceLike | None:
        """From memory; cheap enough for the event loop."""
        return self._source.cached(name)

    async def fetch(self, name: str, *, reason: str) -> NamespaceLike | None:
        """:meth:`read` in a worker thread, counted by ``reason`` and outcome (for ``/mutate``)."""
        try:
            found = await anyio.to_thread.run_sync(self.read, name)
        except NamespaceUnavailable:
            self._metrics.namespace_fetch(reason, "unavailable")
            raise
        self._metrics.namespace_fetch(reason, "found" if found is not None else "absent")
        return found

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
