"""``KubeNamespaceCache``: the namespace source ``serve`` uses in a cluster, over its three parts.

The facade admission sees (``webhook.contract.namespaces.NamespaceSource``,
and ``WatchedSource``): ``cached`` reads the store, ``fetch`` goes through
the fetcher, ``on_arrival`` and ``known_absent`` let a caller wait for the
watch instead of reading, ``start``, ``stop``, ``is_ready`` and
``freshness`` follow the reflector. It owns the parts' lifetimes and their
one connection pool, and nothing else.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webhook.cluster import kube
from webhook.cluster.namespace_cache.api import NamespaceAPI
from webhook.cluster.namespace_cache.arrivals import Arrivals
from webhook.cluster.namespace_cache.fetcher import Fetcher
from webhook.cluster.namespace_cache.options import NamespaceCacheOptions
from webhook.cluster.namespace_cache.reflector import Reflector
from webhook.cluster.namespace_cache.store import NamespaceStore
from webhook.cluster.namespace_cache.throttle import ThrottledLog

# Not webhook.cluster.namespaces_file: that module chooses (and so imports) this one.
from webhook.contract.namespaces import Freshness, NamespaceInfo, NamespaceSourceError


class KubeNamespaceCache:
    """Namespaces of a cluster, kept current by list+watch in one daemon thread.

    ``cached`` reads a dict (no I/O, no locks) and is safe on the event loop;
    ``fetch`` does one ``GET`` for a namespace the watch has not delivered
    yet. Ready after the first successful list, and stays ready while the API
    server is unreachable: the cache then serves what it last knew, which
    beats refusing or un-injecting every pod; ``freshness()`` says how old it
    is.

    ``options`` holds every timing and bound (the defaults suit a cluster;
    tests shrink them). ``clock`` (monotonic seconds) and ``rng`` let tests
    fix time and jitter.
    """

    def __init__(
        self,
        configuration: Any,
        options: NamespaceCacheOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options if options is not None else NamespaceCacheOptions()
        opts = self.options
        self._api = NamespaceAPI(configuration, connect_timeout=opts.connect_timeout)
        self.host: str = self._api.host
        self._clock = clock
        notes = ThrottledLog(opts.warn_every, clock)
        self._store = NamespaceStore(max_bytes=opts.max_cache_bytes)
        self._arrivals = Arrivals(opts.max_arrival_waiters)
        self._reflector = Reflector(
            self._api,
            self._store,
            opts,
            clock=clock,
            rng=rng if rng is not None else random.Random(),  # noqa: S311 - jitter
            notes=notes,
            arrivals=self._arrivals,
        )
        self._fetcher = Fetcher(
            functools.partial(self._api.get, timeout=opts.fetch_timeout),
            self._store,
            timeout=opts.fetch_timeout,
            threads=opts.fetch_threads,
            max_in_flight=opts.max_fetches_in_flight,
            notes=notes,
            absent_seconds=opts.absent_seconds,
            clock=clock,
        )

    @classmethod
    def from_environment(
        cls,
        kubeconfig: Path | None = None,
        *,
        in_cluster: bool | None = None,
        options: NamespaceCacheOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> KubeNamespaceCache:
        """A cache configured like ``kubectl`` would be, inside or outside a cluster.

        An explicit ``kubeconfig`` wins; otherwise the pod's service account
        when running in a cluster; otherwise ``$KUBECONFIG`` or
        ``~/.kube/config``. Raises ``NamespaceSourceError`` with one line.
        """
        try:
            config = kube.load_configuration(kubeconfig, in_cluster=in_cluster)
        except kube.ConfigurationError as err:
            raise NamespaceSourceError(str(err)) from None
        return cls(config, options, clock=clock, rng=rng)

    # -- NamespaceSource ------------------------------------------------------

    def cached(self, name: str) -> NamespaceInfo | None:
        """The namespace from memory (None if the watch has not delivered it); never blocks."""
        return self._store.get(name)

    def fetch(self, name: str) -> NamespaceInfo | None:
        """Read one namespace from the API server (for one the watch has not delivered yet).

        Returns within ``fetch_timeout`` (2 s by default; plus thread
        scheduling), whatever the server does: the GET runs on a small pool of
        fetch threads and the caller waits for it at most that long, or until
        ``stop()``. ``None`` only when the API server answers 404 with a
        Kubernetes ``NotFound`` status (or the name cannot be a namespace's).
        Every other outcome raises ``NamespaceUnavailable`` with one line
        naming the namespace: connection refused, no answer in time, any other
        status (403, 429, 5xx), a garbled or oversized body, too many distinct
        namespaces being fetched at once, a stopped source. No retries
        (urllib3's are off too): the caller decides, and the apiserver retries
        the pod.

        The answer is never older than the call. The caller is asking because
        the apiserver sent a pod whose namespace (as the apiserver saw it)
        may carry a label our cache lacks; a GET sent before this call may
        have been answered from before that label. So concurrent fetches of
        one name share a GET only if it has not been sent yet: a caller
        arriving while one is under way waits for the next, queued behind it
        and sent when it ends. Any number of callers cost at most two GETs
        per name at a time, and each gets an answer read after it arrived.
        """
        return self._fetcher.fetch(name)

    # -- WatchedSource ----------------------------------------------------------

    def on_arrival(self, name: str, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` (from the watch's thread) once ``name`` arrives or the watch stops.

        Returns the canceller, or ``None`` when waiting makes no sense: the
        watch is not live, the namespace is known to exist but is not cached
        (too large, or past the cache's budget: read it), or as many callers
        wait as ``max_arrival_waiters`` allows. Check ``cached`` again after
        registering: it may have arrived just before.
        """
        if self._store.uncached(name):
            return None
        return self._arrivals.wait(name, wake)

    def known_absent(self, name: str) -> bool:
        """Whether a GET found ``name`` missing within ``absent_seconds``, the watch live since.

        Forgotten as soon as the watch delivers the name, on a relist, and
        whenever the watch stops being live (it could miss a creation then).
        """
        return self._arrivals.live and self._store.absent(name, self._clock())

    def is_ready(self) -> bool:
        """True once the first list succeeded (and from then on)."""
        return self._reflector.is_ready()

    def start(self) -> None:
        """Start the watch thread; it lists, then watches until ``stop()``."""
        self._reflector.start()

    def stop(self) -> None:
        """End the watch thread promptly: abort its open request, then join it.

        Fetches in flight are cut off too and later ones raise
        ``NamespaceUnavailable``. Final: a stopped cache is not started again
        (make a new one).
        """
        self._reflector.halt()
        self._fetcher.stop()
        self._api.stop()
        if self._reflector.join(self.options.stop_timeout):
            self._api.clear()

    def freshness(self) -> Freshness:
        """Cache age (since the last list, event or BOOKMARK), watch reconnects and relists.

        Before the first list the age counts from ``start()``. A watch that
        ends cleanly at its timeout also counts: the server had nothing to
        send. So a healthy cache is never older than the longest watch
        timeout (81 s by default), even on a cluster where no namespace
        changes; past ``read_timeout`` (90 s) the watch is failing.
        """
        synced_at = self._store.synced_at
        since = synced_at if synced_at is not None else self._reflector.started_at
        return Freshness(
            age_seconds=max(0.0, self._clock() - since),
            reconnects=max(0, self._reflector.watches - 1),
            relists=self._reflector.relists,
        )

    def describe(self) -> str:
        """One line for the log."""
        state = "synced" if self.is_ready() else "not synced yet"
        return f"namespace watch on {self.host} ({state}, {len(self._store)} namespaces)"

    @property
    def resource_version(self) -> str | None:
        """The resourceVersion the next watch resumes from (None before a list)."""
        return self._reflector.resource_version

    def wait_ready(self, timeout: float) -> bool:
        """Block until the first list succeeded or ``timeout`` passed (for tests and startup)."""
        return self._reflector.wait_ready(timeout)
