"""The watch thread: list, then watch from the list's resourceVersion, and keep the store current.

As client-go's reflector: the namespaces are listed (in pages), then watched
from the list's resourceVersion; every event and BOOKMARK moves the point a
broken watch resumes from; "410 Gone" (history compacted while we were away)
means list again. Any other failure (connection refused, a 5xx, an ERROR
event, a cut or silent stream) is retried with capped exponential backoff
whose streak ends only after a healthy period, while the store keeps serving
what it last knew: a webhook that refused pods whenever the API server
blinked would turn an API server hiccup into an outage.

Every event is applied in one place (``_apply``) and every state change of
the stream (opened, ended, failed) happens in ``_run`` and ``_watch``; what
waits on the watch is told there (``Arrivals``): each name applied, and the
watch becoming live or ceasing to be. While it is not live, absences a GET
noted are forgotten too (``NamespaceStore.forget_absent``): a creation could
go unseen.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import orjson

from webhook.cluster import kube
from webhook.cluster.namespace_cache.api import Expired, NamespaceAPI, Stopping, WatchError
from webhook.cluster.namespace_cache.arrivals import Arrivals
from webhook.cluster.namespace_cache.options import NamespaceCacheOptions
from webhook.cluster.namespace_cache.store import NamespaceStore, estimated_bytes, parse
from webhook.cluster.namespace_cache.throttle import ThrottledLog, log
from webhook.contract.namespaces import NamespaceInfo

_GONE = 410
_KiB = 1024
_MiB = 1024 * _KiB


class Backoff:
    """Capped exponential backoff with jitter whose streak ends only after a healthy period.

    As client-go's backoff manager: a failure continues the streak unless the
    previous one is at least ``healthy_after`` seconds old. Resetting when a
    stream merely opens would let a server that accepts every watch and fails
    it at once (an ERROR event, a cut stream) pull a reconnect out of us every
    ``initial`` seconds. ``healthy_after`` is kept above ``maximum`` so that a
    server failing every attempt never looks healthy between two of them.
    """

    def __init__(
        self, *, initial: float, maximum: float, healthy_after: float, rng: random.Random
    ) -> None:
        self._initial = initial
        self._maximum = maximum
        self._healthy_after = max(healthy_after, 2.0 * maximum)
        self._rng = rng
        self._streak = 0
        self._last_failure = float("-inf")

    @property
    def streak(self) -> int:
        """Failures in the current streak (the last one included)."""
        return self._streak

    def failure(self, now: float) -> float:
        """Record a failure at ``now``; the seconds to wait before the next attempt."""
        if now - self._last_failure >= self._healthy_after:
            self._streak = 0
        self._streak += 1
        self._last_failure = now
        # The exponent is capped so that a long outage cannot overflow the float.
        delay = min(self._maximum, self._initial * 2.0 ** min(self._streak - 1, 62))
        # Jitter keeps many replicas from reconnecting in step after an outage.
        return delay * self._rng.uniform(0.5, 1.0)


class Reflector:
    """Keeps ``store`` current by list+watch in one daemon thread, from ``start()`` to ``stop()``.

    Ready after the first successful list, and stays ready while the API
    server is unreachable. ``clock`` (monotonic seconds) times backoff resets,
    freshness and log throttling; ``rng`` the jitter; ``arrivals`` hears of
    every name applied and of the watch's liveness.
    """

    def __init__(
        self,
        api: NamespaceAPI,
        store: NamespaceStore,
        options: NamespaceCacheOptions,
        *,
        clock: Callable[[], float],
        rng: random.Random,
        notes: ThrottledLog,
        arrivals: Arrivals | None = None,
    ) -> None:
        self._api = api
        self._store = store
        self._arrivals = arrivals if arrivals is not None else Arrivals(0)
        self._watch_timeout = max(1.0, options.watch_timeout_seconds)
        self._read_timeout = options.read_timeout
        self._list_timeout = options.list_timeout
        self._page_size = options.list_page_size
        self._clock = clock
        self._rng = rng
        self._notes = notes
        self._backoff = Backoff(
            initial=options.backoff_initial,
            maximum=options.backoff_max,
            healthy_after=options.healthy_after,
            rng=rng,
        )
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Where the next watch starts: the list's resourceVersion, then that of
        # every event and BOOKMARK applied. None: list (again) first.
        self._resume_from: str | None = None
        self._empty_watches = 0
        # Failures since the store last had data (a list or an event) from the
        # server, for the log; the backoff keeps its own, longer memory.
        self._failures = 0
        self._failures_unreported = 0
        self._started_at = clock()
        self._watches = 0
        self._relists = 0
        self._relist_reason = ""

    # -- state ---------------------------------------------------------------------

    @property
    def resource_version(self) -> str | None:
        """The resourceVersion the next watch resumes from (None before a list)."""
        return self._resume_from

    @property
    def started_at(self) -> float:
        """When ``start()`` was called (or the reflector made, before that), on its clock."""
        return self._started_at

    @property
    def watches(self) -> int:
        """Watch requests sent so far."""
        return self._watches

    @property
    def relists(self) -> int:
        """Successful lists after the first."""
        return self._relists

    @property
    def thread(self) -> threading.Thread | None:
        """The watch thread, once started."""
        return self._thread

    def is_ready(self) -> bool:
        """True once the first list succeeded (and from then on)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        """Block until the first list succeeded or ``timeout`` passed."""
        return self._ready.wait(timeout)

    # -- life ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the watch thread (once); it lists, then watches until ``halt()``."""
        if self._thread is not None:
            return
        self._started_at = self._clock()
        self._thread = threading.Thread(target=self._run, name="namespace-watch", daemon=True)
        self._thread.start()

    def halt(self) -> None:
        """Tell the thread to end: no new attempt, no more waiting out a backoff.

        The request it may be blocked in is cut off by ``NamespaceAPI.stop``.
        """
        self._stopping.set()

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end after ``halt()``; whether it did (False if never started)."""
        thread = self._thread
        if thread is None:
            return False
        thread.join(timeout)
        if thread.is_alive():  # pragma: no cover - a request stuck in connect()
            log.warning("namespace watch did not stop within %.1fs", timeout)
            return False
        return True

    # -- the watch thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            self._run_until_stopped()
        finally:
            self._not_live()
        log.debug("namespace watch stopped")

    def _not_live(self) -> None:
        """Tell waiters the watch stopped delivering, and forget what it can no longer vouch for."""
        self._arrivals.set_live(False)
        self._store.forget_absent()

    def _run_until_stopped(self) -> None:
        expired_in_a_row = 0
        while not self._stopping.is_set():
            try:
                if self._resume_from is None:
                    self._list()
                self._watch()
                expired_in_a_row = 0
            except Expired as err:
                self._not_live()
                # Normal after a long disconnect or an etcd compaction; the
                # relist's own log line gives the reason.
                log.debug("namespace watch: %s; listing again", err)
                self._relist_reason = str(err)
                self._resume_from = None
                expired_in_a_row += 1
                if expired_in_a_row > 1:  # a server that keeps saying 410 must not spin us
                    self._stopping.wait(self._backoff.failure(self._clock()))
            except Stopping:
                break
            except Exception as err:
                if self._stopping.is_set():
                    break  # stop() cut the connection; that is not a failure
                self._not_live()
                delay = self._backoff.failure(self._clock())
                self._failed(err, delay)
                # Keep the resume point (the last version applied, not the one
                # this watch started at): resuming is cheaper than a relist,
                # and the server says 410 if it has forgotten that version.
                self._stopping.wait(delay)

    def _list(self) -> None:
        """List every namespace, a page at a time, and swap the result into the store."""
        listing = self._store.listing()
        resource_version = ""
        # A page over MAX_LIST_PAGE_BYTES (namespaces with large metadata) is
        # asked for again with fewer namespaces, see kube.paged.
        pages = kube.paged(
            lambda query: self._api.list_page(query, timeout=self._list_timeout),
            page_size=self._page_size,
            what="the namespace list",
        )
        for version, items in pages:
            resource_version = resource_version or version
            for obj in items:
                info = self._usable(obj, uncached=listing.skip)
                if info is not None:
                    listing.add(info)
        # A swap, not an update: namespaces deleted while we were away vanish.
        self._store.replace(listing)
        self._resume_from = resource_version
        self._store.mark_synced(self._clock())
        if listing.left_out:
            self._cache_full(listing.first_left_out, listing.left_out)
        self._recovered()
        first = not self._ready.is_set()
        if not first:
            self._relists += 1
        self._ready.set()
        if first or self._notes.allow("relist"):
            log.info(
                "namespace watch: %s %d namespaces from %s at resourceVersion %s%s",
                "listed" if first else "relisted",
                len(listing.items),
                self._api.host,
                resource_version,
                f" ({self._relist_reason})" if self._relist_reason and not first else "",
            )

    def _watch(self) -> None:
        """Apply watch events until the server ends the watch, advancing the resume point."""
        resource_version = self._resume_from
        if resource_version is None:  # pragma: no cover - _run lists first
            raise Expired("no resourceVersion to watch from")
        # Random in [t, 1.8 t) so replicas spread their renewals; below the read
        # timeout so that a quiet, healthy watch ends before it looks dead.
        spread = self._watch_timeout * (1.0 + 0.8 * self._rng.random())
        timeout = max(1, int(min(spread, 0.9 * self._read_timeout)))
        self._watches += 1
        started = self._clock()
        events = 0
        with self._api.watch(
            resource_version, timeout_seconds=timeout, read_timeout=self._read_timeout
        ) as lines:
            log.debug(
                "namespace watch: watching from resourceVersion %s for %ds",
                resource_version,
                timeout,
            )
            # Not a recovery yet: a server can accept every watch and fail it
            # at once. Only data (an applied event) counts, see _apply. But
            # the stream is open: what it delivers can be waited for.
            self._arrivals.set_live(True)
            for line in lines:
                self._apply(line)
                events += 1
        lasted = self._clock() - started
        if lasted >= timeout / 2:
            # The stream stayed open and ended cleanly near its timeout: the
            # server had our resourceVersion and nothing more to say, so the
            # store was in sync all along, even if no namespace changed.
            self._store.mark_synced(self._clock())
            self._recovered()
            self._empty_watches = 0
        elif events == 0:
            # One short empty watch happens (a server restarting its watch
            # cache); a server that keeps doing it must get backoff, not a
            # tight loop of requests.
            self._empty_watches += 1
            if self._empty_watches > 1:
                raise WatchError("the server keeps ending watches at once")
        else:
            self._empty_watches = 0

    def _apply(self, line: bytes) -> None:
        event = orjson.loads(line)
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise ValueError("a watch event without an object")
        kind = event.get("type")
        obj: dict[str, Any] = event["object"]
        if kind == "ERROR":
            message = obj.get("message") or obj.get("reason") or "no message"
            if obj.get("code") == _GONE:
                raise Expired(f"resourceVersion {self._resume_from} is too old ({message})")
            raise WatchError(f"watch error {obj.get('code')}: {message}")
        raw_metadata = obj.get("metadata")
        metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
        name = metadata.get("name")
        if kind in ("ADDED", "MODIFIED"):
            self._put(obj, name)
        elif kind == "DELETED":
            if isinstance(name, str):
                self._store.remove(name)
        elif kind == "BOOKMARK":
            log.debug(
                "namespace watch: bookmark at resourceVersion %s", metadata.get("resourceVersion")
            )
        else:
            log.debug("namespace watch: ignoring event type %r", kind)
        # An event or a BOOKMARK says the store holds everything up to it.
        self._store.mark_synced(self._clock())
        self._recovered()
        latest = metadata.get("resourceVersion")
        if isinstance(latest, str) and latest:
            # Every applied event and BOOKMARK moves the resume point, so a
            # broken stream continues here rather than where it started.
            self._resume_from = latest

    def _put(self, obj: dict[str, Any], name: Any) -> None:
        """Apply an ADDED or MODIFIED namespace, and tell whoever waits for it."""
        info = self._usable(obj, uncached=self._store.put_uncached)
        if info is None:
            if isinstance(name, str) and not self._store.uncached(name):
                # What cannot be cached must not stay cached as it was before.
                self._store.remove(name)
        elif not self._store.put(info):
            self._cache_full(info.name, 1)
        if isinstance(name, str):
            self._arrivals.arrived(name)

    def _usable(self, obj: Any, *, uncached: Callable[[str], None]) -> NamespaceInfo | None:
        """What the store keeps of a Namespace object; None (logged) when it cannot keep it.

        A namespace too large to keep is passed to ``uncached``: it exists.
        """
        try:
            info = parse(obj)
        except (ValueError, AttributeError) as err:
            self._notes.warn(
                "malformed", "namespace watch: skipping a malformed Namespace: %s", err
            )
            return None
        if not self._store.fits(info):
            uncached(info.name)
            self._notes.warn(
                "oversized",
                "namespace %s: its labels and sidecar annotations take about %d KiB, over the"
                " %d KiB a cached namespace may hold; it is read from the API server on each"
                " admission instead",
                info.name,
                estimated_bytes(info) // _KiB,
                self._store.max_entry_bytes // _KiB,
            )
            return None
        return info

    # -- the log -------------------------------------------------------------------

    def _failed(self, err: Exception, delay: float) -> None:
        """Log a failure: a warning at most once a ``warn_every``, the rest at debug level."""
        self._failures += 1
        self._failures_unreported += 1
        expected = isinstance(err, (OSError, ValueError, kube.ResponseError)) or (
            type(err).__module__.startswith("urllib3")
        )
        if self._notes.allow("failure"):
            unreported = self._failures_unreported
            log.warning(
                "namespace watch on %s failed: %s; retry %d in %.3gs (%d failure%s since the"
                " last warning), serving %d cached namespaces",
                self._api.host,
                kube.one_line(err),
                self._backoff.streak,
                delay,
                unreported,
                "" if unreported == 1 else "s",
                len(self._store),
                # A traceback only for what is not a network or server problem (a bug).
                exc_info=None if expected else err,
            )
            self._failures_unreported = 0
        else:
            log.debug(
                "namespace watch failed: %s; retry %d in %.3fs",
                kube.one_line(err),
                self._backoff.streak,
                delay,
            )

    def _recovered(self) -> None:
        """The server sent data (a list, an event): the end of a failure streak, for the log."""
        if not self._failures:
            return
        if self._notes.allow("recovered"):
            log.info(
                "namespace watch on %s: in sync again after %d failed attempts",
                self._api.host,
                self._failures,
            )
        self._failures = 0

    def _cache_full(self, first: str, count: int) -> None:
        self._notes.warn(
            "full",
            "namespace cache: %d namespaces (first %s) do not fit in its %d MiB; they are read"
            " from the API server on each admission instead",
            count,
            first,
            self._store.max_bytes // _MiB,
        )
