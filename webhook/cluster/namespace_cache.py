"""A watch-backed cache of the cluster's Namespaces, over ``webhook.cluster.kube``.

Admission must not make an API call per request, so one daemon thread keeps a
copy of every Namespace's labels and annotations, as client-go's reflector
does: it lists them (in pages), then watches from the list's resourceVersion;
every event and BOOKMARK moves the point a broken watch resumes from; "410
Gone" (history compacted while we were away) means list again. Any other
failure (connection refused, a 5xx, an ERROR event, a cut or silent stream)
is retried with capped exponential backoff whose streak ends only after a
healthy period, while the cache keeps serving what it last knew: a webhook
that refused pods whenever the API server blinked would turn an API server
hiccup into an outage. ``fetch`` answers for a namespace the watch has not
delivered yet, within a fixed time, and says so when it cannot.

``webhook.cluster.kube`` (the one module that imports ``kubernetes``) supplies the
configuration, the connection pool and the bounded reading of bodies and
events; objects stay plain dicts, never the client's models (they drop and
rename fields).

Everything the API server sends is bounded, so a broken or hostile server
costs time, never the process:

- a list page is at most ``MAX_LIST_PAGE_BYTES`` (8 MiB) of ``LIST_PAGE_SIZE``
  (500) namespaces; a page over it is asked for again with a quarter of the
  items, down to one namespace per page;
- a watch event, a GET body: ``MAX_OBJECT_BYTES`` (4 MiB; etcd stores at most
  1.5 MiB per object by default); an error body: 64 KiB, of which only the
  message is kept; a compressed body (never asked for) is refused;
- memory: of annotations only the ``sidecar.mesh.io/`` ones are kept (the only
  ones admission reads; kubectl's last-applied-configuration alone may be
  256 KiB); a namespace may take ``MAX_NAMESPACE_BYTES`` (64 KiB, estimated
  from string sizes plus a per-entry and per-label overhead) and the whole
  cache ``MAX_CACHE_BYTES`` (32 MiB, over 20,000 ordinary namespaces). What
  does not fit is not cached: ``fetch`` reads it on each admission instead;
- time: each list page ``list_timeout``; a watch asks the server to end it
  within 45-81 s and may be silent for ``read_timeout`` (90 s); ``fetch``
  answers within ``fetch_timeout`` (2 s);
- log volume: each kind of warning (failures, recovery, relists, malformed or
  oversized namespaces, a full cache) at most once per ``warn_every`` (60 s).
"""

from __future__ import annotations

import functools
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import orjson
import urllib3

from webhook.cluster import kube
from webhook.contract import constants

# Not webhook.cluster.namespaces_file: that module chooses (and so imports) this one.
from webhook.contract.namespaces import (
    Freshness,
    NamespaceInfo,
    NamespaceSourceError,
    NamespaceUnavailable,
)
from webhook.engine.values import is_namespace_name

log = logging.getLogger("webhook.namespaces")

_PATH = "/api/v1/namespaces"
_GONE = 410
_NOT_FOUND = 404
_OK = 200
_KiB = 1024
_MiB = 1024 * _KiB

LIST_PAGE_SIZE = 500  # as client-go's reflector pages its lists
MAX_LIST_PAGE_BYTES = 8 * _MiB
MAX_OBJECT_BYTES = 4 * _MiB
MAX_ERROR_BYTES = kube.MAX_ERROR_BYTES
MAX_NAMESPACE_BYTES = 64 * _KiB
MAX_CACHE_BYTES = 32 * _MiB
# Distinct namespaces being fetched at once, and the GETs that may run at
# once: a burst of new namespaces (or /preview?namespace= calls) neither
# queues without end nor opens a connection each.
MAX_FETCHES_IN_FLIGHT = 64
FETCH_THREADS = 4

# How long a watch may stay silent before it counts as a dead connection (a
# half-open TCP connection after a node or network change never says so).
#
# Bookmarks alone cannot bound the silence. kube-apiserver's watch cache
# (k8s.io/apiserver pkg/storage/cacher, v1.37: defaultBookmarkFrequency = 1
# minute) sends a watch that allows bookmarks a BOOKMARK about once a minute
# and one 2 s before the watch's timeout, but only one newer than the
# resourceVersion the watch started from (cache_watcher.go, process()): while
# no Namespace changes, there is none. Measured on the e2e control plane
# (v1.37.2): a quiet namespace watch got no event at all for its whole 20 s and
# 75 s, with ConfigMaps written meanwhile, and ended cleanly at its timeout;
# after one namespace change, bookmarks came 2 s and 1 s before the end.
#
# What does bound it is the watch's own timeout: the server ends the stream
# cleanly at timeoutSeconds. So each watch asks for a timeout below the read
# timeout (_WATCH_TIMEOUT_SECONDS, 45-81 s): a healthy watch, quiet or not,
# always ends or speaks within 81 s, and 90 s of silence means the connection
# is gone. (The client's TCP keepalive drops a peer that stops answering after
# about 165 s, but not a proxy that keeps the TCP session up while the watch
# behind it is gone.) The price is a watch request every minute or so per
# replica, from the watch cache, against a relist or a stale cache.
_READ_TIMEOUT_SECONDS = 90.0
# The shortest server-side watch timeout; each watch asks for a random one in
# [t, 1.8 t), capped below the read timeout, so replicas do not renew in step.
_WATCH_TIMEOUT_SECONDS = 45.0


# The watch's resourceVersion (or a list's continue token) is too old: list again.
_Expired = kube.Expired
# A body or an event over its bound; the request is abandoned.
_TooLarge = kube.TooLarge


class _WatchError(kube.ResponseError):
    """The server answered, but with something the cache cannot use (a status, an ERROR event)."""


class _Stopping(Exception):
    """``stop()`` was called while a request was being opened."""


@dataclass
class _Fetches:
    """One name's GET under way (or waiting for a fetch thread), and the one queued behind it."""

    current: Future[NamespaceInfo | None]
    queued: Future[NamespaceInfo | None] | None = None


def _pass_on(
    target: Future[NamespaceInfo | None], name: str, source: Future[NamespaceInfo | None]
) -> None:
    """Give the callers of a queued fetch the outcome of the GET sent for them."""
    if source.cancelled():  # stop() cancelled it before a thread took it
        target.set_exception(
            NamespaceUnavailable(f"namespace {name}: the namespace source is stopped")
        )
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


class KubeNamespaceCache:
    """Namespaces of a cluster, kept current by list+watch in one daemon thread.

    ``cached`` reads a dict (no I/O, no locks) and is safe on the event loop;
    ``fetch`` does one ``GET`` for a namespace the watch has not delivered
    yet. Ready after the first successful list, and stays ready while the API
    server is unreachable: the cache then serves what it last knew, which
    beats refusing or un-injecting every pod; ``freshness()`` says how old it
    is.

    The timing parameters exist so tests can run in seconds; the defaults suit
    a cluster. ``read_timeout`` is how long a watch may be silent before it is
    abandoned and resumed. ``watch_timeout_seconds`` is the shortest
    server-side watch timeout: each watch asks for a random value between it
    and 1.8 times it (never above 0.9 ``read_timeout``, so that a healthy quiet
    watch ends before it could look dead), and many replicas do not renew
    their watches in lockstep.
    ``clock`` (monotonic seconds) and ``rng`` let tests fix time and jitter.
    """

    def __init__(
        self,
        configuration: Any,
        *,
        watch_timeout_seconds: float = _WATCH_TIMEOUT_SECONDS,
        list_timeout: float = 30.0,
        fetch_timeout: float = 2.0,
        connect_timeout: float = 5.0,
        read_timeout: float = _READ_TIMEOUT_SECONDS,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        stop_timeout: float = 2.0,
        warn_every: float = 60.0,
        healthy_after: float = 60.0,
        max_cache_bytes: int = MAX_CACHE_BYTES,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        # No retries in the connection: this class retries with its own
        # backoff, and urllib3's would multiply each timeout on a hung server.
        self._api = kube.Connection(configuration, connect_timeout=connect_timeout)
        self.host: str = self._api.host
        self._watch_timeout = max(1.0, watch_timeout_seconds)
        self._list_timeout = list_timeout
        self._fetch_timeout = fetch_timeout
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._stop_timeout = stop_timeout
        self._max_cache_bytes = max_cache_bytes
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter
        self._backoff = _Backoff(
            initial=backoff_initial,
            maximum=backoff_max,
            healthy_after=healthy_after,
            rng=self._rng,
        )
        self._throttle = _Throttle(warn_every)

        # Replaced wholesale on a relist and updated in place by events, both
        # under _write_lock; readers take no lock (a dict lookup is atomic in
        # CPython), which is what keeps cached() non-blocking.
        self._items: dict[str, NamespaceInfo] = {}
        self._bytes = 0  # estimated memory of _items, see _estimated_bytes
        self._write_lock = threading.Lock()
        # Bumped (under _write_lock) whenever the watch removes namespaces: a
        # DELETED event or a relist. A fetch caches its answer only if this
        # did not change while its GET was in flight (see _store_fetched).
        self._removals = 0
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Open responses (the watch thread's, and fetches'), so stop() can cut them off.
        self._response: Any = None
        self._response_lock = threading.Lock()
        self._fetch_responses: set[Any] = set()
        # Per name, the GET under way and the one queued behind it (see
        # fetch): a Deployment scaled up in a brand-new namespace should not
        # send one request per replica. Re-entrant: a future's done-callback
        # may run in the thread that submitted it.
        self._inflight: dict[str, _Fetches] = {}
        self._inflight_lock = threading.RLock()
        self._fetcher = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="namespace-fetch")
        # Done when stop() is called, so fetches waiting for a GET return at once.
        self._stopped: Future[None] = Future()
        self._empty_watches = 0
        # Failures since the cache last had data (a list or an event) from the
        # server, for the log; the backoff keeps its own, longer memory.
        self._failures = 0
        self._failures_unreported = 0
        # Where the next watch starts: the list's resourceVersion, then that of
        # every event and BOOKMARK applied. None: list (again) first.
        self._resume_from: str | None = None
        # For freshness(): when the cache last knew it was in sync, and counts.
        self._started_at = clock()
        self._synced_at: float | None = None
        self._watches = 0
        self._relists = 0
        self._relist_reason = ""

    @classmethod
    def from_environment(
        cls, kubeconfig: Path | None = None, *, in_cluster: bool | None = None, **options: Any
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
        return cls(config, **options)

    # -- NamespaceSource ------------------------------------------------------

    def cached(self, name: str) -> NamespaceInfo | None:
        """The namespace as the watch last saw it; a dict lookup, no I/O."""
        return self._items.get(name)

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
        if not is_namespace_name(name):
            return None  # the API server could not hold such a namespace
        with self._inflight_lock:
            fetches = self._inflight.get(name)
            if fetches is None:
                if len(self._inflight) >= MAX_FETCHES_IN_FLIGHT:
                    raise NamespaceUnavailable(
                        f"namespace {name}: {len(self._inflight)} other namespaces are being"
                        " read from the API server already"
                    )
                future = self._submit(name)
                self._inflight[name] = _Fetches(future)
                # After the entry exists: a callback on a done future runs at once.
                future.add_done_callback(functools.partial(self._fetched, name))
            elif not fetches.current.running() and not fetches.current.done():
                future = fetches.current  # still waiting for a fetch thread: not sent yet
            else:
                if fetches.queued is None:
                    fetches.queued = Future()
                future = fetches.queued
        either: list[Future[Any]] = [future, self._stopped]
        done, _ = wait(either, self._fetch_timeout, FIRST_COMPLETED)
        if future not in done:
            if self._stopped.done():
                raise NamespaceUnavailable(f"namespace {name}: the namespace source is stopped")
            raise NamespaceUnavailable(
                f"namespace {name}: no answer from the API server within {self._fetch_timeout:g}s"
            )
        try:
            return future.result()
        except CancelledError:
            raise NamespaceUnavailable(
                f"namespace {name}: the namespace source is stopped"
            ) from None
        except NamespaceUnavailable as err:
            # A fresh exception per caller: several threads may share the future.
            raise NamespaceUnavailable(str(err)) from None
        except Exception as err:  # a bug, not the server: say so once, still fail closed
            self._note("fetch-bug", "namespace %s: fetch failed unexpectedly", name, exc_info=err)
            raise NamespaceUnavailable(f"namespace {name}: {_one_line(err)}") from None

    def is_ready(self) -> bool:
        """True once the first list succeeded (and from then on)."""
        return self._ready.is_set()

    def start(self) -> None:
        """Start the watch thread; it lists, then watches until ``stop()``."""
        if self._thread is not None:
            return
        self._started_at = self._clock()
        self._thread = threading.Thread(target=self._run, name="namespace-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the watch thread promptly: abort its open request, then join it.

        Fetches in flight are cut off too and later ones raise
        ``NamespaceUnavailable``. Final: a stopped cache is not started again
        (make a new one).
        """
        self._stopping.set()
        if not self._stopped.done():
            self._stopped.set_result(None)
        self._abort_response()
        with self._response_lock:
            fetching = list(self._fetch_responses)
        for response in fetching:
            _shutdown(response)
        self._fetcher.shutdown(wait=False, cancel_futures=True)
        thread = self._thread
        if thread is None:
            return
        thread.join(self._stop_timeout)
        if thread.is_alive():  # pragma: no cover - a request stuck in connect()
            log.warning("namespace watch did not stop within %.1fs", self._stop_timeout)
        else:
            self._api.clear()

    def freshness(self) -> Freshness:
        """Cache age (since the last list, event or BOOKMARK), watch reconnects and relists.

        Before the first list the age counts from ``start()``. A watch that
        ends cleanly at its timeout also counts: the server had nothing to
        send. So a healthy cache is never older than the longest watch
        timeout (81 s by default), even on a cluster where no namespace
        changes; past ``read_timeout`` (90 s) the watch is failing.
        """
        since = self._synced_at if self._synced_at is not None else self._started_at
        return Freshness(
            age_seconds=max(0.0, self._clock() - since),
            reconnects=max(0, self._watches - 1),
            relists=self._relists,
        )

    def describe(self) -> str:
        """One line for the log."""
        state = "synced" if self.is_ready() else "not synced yet"
        return f"namespace watch on {self.host} ({state}, {len(self._items)} namespaces)"

    @property
    def resource_version(self) -> str | None:
        """The resourceVersion the next watch resumes from (None before a list)."""
        return self._resume_from

    def wait_ready(self, timeout: float) -> bool:
        """Block until the first list succeeded or ``timeout`` passed (for tests and startup)."""
        return self._ready.wait(timeout)

    # -- the watch thread -----------------------------------------------------

    def _run(self) -> None:
        expired_in_a_row = 0
        while not self._stopping.is_set():
            try:
                if self._resume_from is None:
                    self._list()
                self._watch()
                expired_in_a_row = 0
            except _Expired as err:
                # Normal after a long disconnect or an etcd compaction; the
                # relist's own log line gives the reason.
                log.debug("namespace watch: %s; listing again", err)
                self._relist_reason = str(err)
                self._resume_from = None
                expired_in_a_row += 1
                if expired_in_a_row > 1:  # a server that keeps saying 410 must not spin us
                    self._stopping.wait(self._backoff.failure(self._clock()))
            except _Stopping:
                break
            except Exception as err:
                if self._stopping.is_set():
                    break  # stop() cut the connection; that is not a failure
                delay = self._backoff.failure(self._clock())
                self._failed(err, delay)
                # Keep the resume point (the last version applied, not the one
                # this watch started at): resuming is cheaper than a relist,
                # and the server says 410 if it has forgotten that version.
                self._stopping.wait(delay)
        log.debug("namespace watch stopped")

    def _list(self) -> None:
        """List every namespace, a page at a time, and swap the result in."""
        fresh: dict[str, NamespaceInfo] = {}
        total = 0
        left_out = 0
        first_left_out = ""
        resource_version = ""
        for version, items in self._pages():
            resource_version = resource_version or version
            for obj in items:
                info = self._usable(obj)
                if info is None:
                    continue
                cost = _estimated_bytes(info)
                if total + cost > self._max_cache_bytes:
                    left_out += 1
                    first_left_out = first_left_out or info.name
                    continue
                fresh[info.name] = info
                total += cost
        with self._write_lock:
            # A swap, not an update: namespaces deleted while we were away vanish.
            self._items = fresh
            self._bytes = total
            self._removals += 1
        self._resume_from = resource_version
        self._synced_at = self._clock()
        if left_out:
            self._cache_full(first_left_out, left_out)
        self._recovered()
        first = not self._ready.is_set()
        if not first:
            self._relists += 1
        self._ready.set()
        if first or self._throttle.allow("relist", self._clock()):
            log.info(
                "namespace watch: %s %d namespaces from %s at resourceVersion %s%s",
                "listed" if first else "relisted",
                len(fresh),
                self.host,
                resource_version,
                f" ({self._relist_reason})" if self._relist_reason and not first else "",
            )

    def _pages(self) -> Iterator[tuple[str, list[Any]]]:
        """The list's pages: (resourceVersion, items), following continue tokens.

        A page over ``MAX_LIST_PAGE_BYTES`` (namespaces with large metadata)
        is asked for again with fewer namespaces, see ``kube.paged``.
        """
        return kube.paged(self._list_page, page_size=LIST_PAGE_SIZE, what="the namespace list")

    def _list_page(self, query: Mapping[str, str]) -> dict[str, Any]:
        response = self._open(lambda: self._request(_PATH, query, read_timeout=self._list_timeout))
        complete = False
        try:
            if response.status == _GONE and "continue" in query:
                raise _Expired("the list's continue token expired (HTTP 410)")
            if response.status != _OK:
                raise _WatchError(
                    f"list: HTTP {response.status}"
                    f"{kube.read_status_message(response, timeout=self._list_timeout)}"
                )
            with _deadline(self._list_timeout, response) as expired:
                try:
                    body = _read_body(response, limit=MAX_LIST_PAGE_BYTES, what="a list page")
                except _TooLarge:
                    raise
                except Exception:
                    if expired.is_set():
                        raise _WatchError(
                            f"a list page did not arrive within {self._list_timeout:g}s"
                        ) from None
                    raise
            complete = True
        finally:
            self._release(response, complete=complete)
        page = orjson.loads(body)
        if not isinstance(page, dict):
            raise ValueError("the namespace list is not an object")
        return page

    def _watch(self) -> None:
        """Apply watch events until the server ends the watch, advancing the resume point."""
        resource_version = self._resume_from
        if resource_version is None:  # pragma: no cover - _run lists first
            raise _Expired("no resourceVersion to watch from")
        # Random in [t, 1.8 t) so replicas spread their renewals; below the read
        # timeout so that a quiet, healthy watch ends before it looks dead.
        spread = self._watch_timeout * (1.0 + 0.8 * self._rng.random())
        timeout = max(1, int(min(spread, 0.9 * self._read_timeout)))
        self._watches += 1
        started = self._clock()
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout),
        }
        # Not the watch's own timeout plus slack: that left a half-open
        # connection unnoticed for up to 10.5 minutes.
        response = self._open(lambda: self._request(_PATH, query, read_timeout=self._read_timeout))
        events = 0
        try:
            if response.status == _GONE:
                raise _Expired(f"resourceVersion {resource_version} is too old (HTTP 410)")
            if response.status != _OK:
                raise _WatchError(
                    f"watch: HTTP {response.status}"
                    f"{kube.read_status_message(response, timeout=self._read_timeout)}"
                )
            _check_encoding(response, "the watch")
            log.debug(
                "namespace watch: watching from resourceVersion %s for %ds",
                resource_version,
                timeout,
            )
            # Not a recovery yet: a server can accept every watch and fail it
            # at once. Only data (an applied event) counts, see _apply.
            for line in _lines(response, limit=MAX_OBJECT_BYTES):
                self._apply(line)
                events += 1
        except urllib3.exceptions.ReadTimeoutError:
            raise _WatchError(
                f"the watch was silent for {self._read_timeout:g}s, past its own"
                f" {timeout}s timeout; taking the connection for dead"
            ) from None
        finally:
            self._release(response, complete=False)
        lasted = self._clock() - started
        if lasted >= timeout / 2:
            # The stream stayed open and ended cleanly near its timeout: the
            # server had our resourceVersion and nothing more to say, so the
            # cache was in sync all along, even if no namespace changed.
            self._synced_at = self._clock()
            self._recovered()
            self._empty_watches = 0
        elif events == 0:
            # One short empty watch happens (a server restarting its watch
            # cache); a server that keeps doing it must get backoff, not a
            # tight loop of requests.
            self._empty_watches += 1
            if self._empty_watches > 1:
                raise _WatchError("the server keeps ending watches at once")
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
                raise _Expired(f"resourceVersion {self._resume_from} is too old ({message})")
            raise _WatchError(f"watch error {obj.get('code')}: {message}")
        raw_metadata = obj.get("metadata")
        metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
        name = metadata.get("name")
        if kind in ("ADDED", "MODIFIED"):
            info = self._usable(obj)
            if info is not None:
                self._put(info)
            elif isinstance(name, str):
                # What cannot be cached must not stay cached as it was before.
                self._remove(name)
        elif kind == "DELETED":
            if isinstance(name, str):
                self._remove(name)
        elif kind == "BOOKMARK":
            log.debug(
                "namespace watch: bookmark at resourceVersion %s", metadata.get("resourceVersion")
            )
        else:
            log.debug("namespace watch: ignoring event type %r", kind)
        # An event or a BOOKMARK says the cache holds everything up to it.
        self._synced_at = self._clock()
        self._recovered()
        latest = metadata.get("resourceVersion")
        if isinstance(latest, str) and latest:
            # Every applied event and BOOKMARK moves the resume point, so a
            # broken stream continues here rather than where it started.
            self._resume_from = latest

    def _put(self, info: NamespaceInfo) -> None:
        cost = _estimated_bytes(info)
        with self._write_lock:
            old = self._items.get(info.name)
            freed = _estimated_bytes(old) if old is not None else 0
            fits = self._bytes - freed + cost <= self._max_cache_bytes
            if fits:
                self._items[info.name] = info
                self._bytes += cost - freed
            elif old is not None:
                del self._items[info.name]
                self._bytes -= freed
                self._removals += 1
        if not fits:
            self._cache_full(info.name, 1)

    def _remove(self, name: str) -> None:
        with self._write_lock:
            old = self._items.pop(name, None)
            if old is not None:
                self._bytes -= _estimated_bytes(old)
            # Counted even for a name not cached: a fetch of it may be in
            # flight, and must not bring it back.
            self._removals += 1

    def _usable(self, obj: Any) -> NamespaceInfo | None:
        """What the cache keeps of a Namespace object; None (logged) when it cannot keep it."""
        try:
            info = _parse(obj)
        except (ValueError, AttributeError) as err:
            self._note("malformed", "namespace watch: skipping a malformed Namespace: %s", err)
            return None
        size = _estimated_bytes(info)
        if size > MAX_NAMESPACE_BYTES:
            self._note(
                "oversized",
                "namespace %s: its labels and sidecar annotations take about %d KiB, over the"
                " %d KiB a cached namespace may hold; it is read from the API server on each"
                " admission instead",
                info.name,
                size // _KiB,
                MAX_NAMESPACE_BYTES // _KiB,
            )
            return None
        return info

    # -- fetch ------------------------------------------------------------------

    def _read(self, name: str, removals: int) -> NamespaceInfo | None:
        """GET one namespace (in a fetch thread); ``removals`` is the count before it was sent."""
        what = f"namespace {name}"
        try:
            response = self._request(
                f"{_PATH}/{quote(name, safe='')}", {}, read_timeout=self._fetch_timeout
            )
        except Exception as err:  # connection refused, connect or header timeout, TLS
            raise NamespaceUnavailable(f"{what}: {_one_line(err)}") from None
        with self._response_lock:
            self._fetch_responses.add(response)
        complete = False
        try:
            with _deadline(self._fetch_timeout, response) as expired:
                try:
                    if response.status == _NOT_FOUND:
                        body = _read_body(response, limit=MAX_ERROR_BYTES, what="the 404 answer")
                        complete = True
                        if _is_not_found(body):
                            return None
                        raise NamespaceUnavailable(
                            f"{what}: HTTP 404 without a Kubernetes NotFound status"
                        )
                    if response.status != _OK:
                        raise NamespaceUnavailable(
                            f"{what}: HTTP {response.status}"
                            f"{kube.read_status_message(response, timeout=self._fetch_timeout)}"
                        )
                    body = _read_body(response, limit=MAX_OBJECT_BYTES, what="the body")
                    complete = True
                except NamespaceUnavailable:
                    raise
                except Exception as err:  # a cut or garbled stream, an oversized body
                    if expired.is_set():
                        raise NamespaceUnavailable(
                            f"{what}: the answer did not arrive within {self._fetch_timeout:g}s"
                        ) from None
                    raise NamespaceUnavailable(f"{what}: {_one_line(err)}") from None
        finally:
            with self._response_lock:
                self._fetch_responses.discard(response)
            self._release(response, complete=complete)
        try:
            obj = orjson.loads(body)
            info = _parse(obj)
        except (ValueError, AttributeError) as err:
            raise NamespaceUnavailable(
                f"{what}: the API server's answer is not a Namespace: {_one_line(err)}"
            ) from None
        if info.name != name:
            raise NamespaceUnavailable(f"{what}: the API server answered for {info.name}")
        if _estimated_bytes(info) <= MAX_NAMESPACE_BYTES:
            self._store_fetched(info, removals=removals)
        return info

    def _store_fetched(self, info: NamespaceInfo, *, removals: int) -> None:
        """Cache a fetched namespace if nothing says it may be gone by now.

        The watch is the authority on what exists; a fetch may only fill a gap
        it has not reached yet, never undo a removal. The GET's answer can be
        older than a deletion the watch applied while it was in flight, and
        resourceVersions are opaque strings that clients must not compare
        (API conventions), so the rule is by order of events instead: the
        answer is cached only if the watch removed nothing at all (no DELETED
        event, no relist) since before the GET was sent, and never over a copy
        the watch already holds (that one is as current, or its next event
        will make it so). A skipped insert costs one more GET on the next
        admission, or none once the watch delivers the namespace.
        """
        cost = _estimated_bytes(info)
        with self._write_lock:
            if (
                self._removals == removals
                and info.name not in self._items
                and self._bytes + cost <= self._max_cache_bytes
            ):
                self._items[info.name] = info
                self._bytes += cost

    def _submit(self, name: str) -> Future[NamespaceInfo | None]:
        """Hand a GET of ``name`` to the fetch threads (under ``_inflight_lock``)."""
        try:
            # The removal count from before the GET is sent (see _store_fetched).
            return self._fetcher.submit(self._read, name, self._removals)
        except RuntimeError:  # the pool is shut down
            raise NamespaceUnavailable(
                f"namespace {name}: the namespace source is stopped"
            ) from None

    def _fetched(self, name: str, done: Future[NamespaceInfo | None]) -> None:
        """A GET ended: send the one queued behind it, if any, else forget the name."""
        with self._inflight_lock:
            fetches = self._inflight.get(name)
            if fetches is None or fetches.current is not done:
                return
            queued, fetches.queued = fetches.queued, None
            if queued is None:
                del self._inflight[name]
                return
            try:
                current = self._submit(name)
            except NamespaceUnavailable as err:
                del self._inflight[name]
                queued.set_exception(err)
                return
            fetches.current = current
            current.add_done_callback(functools.partial(self._fetched, name))
            current.add_done_callback(functools.partial(_pass_on, queued, name))

    # -- plumbing ---------------------------------------------------------------

    def _request(
        self, path: str, query: Mapping[str, str], *, read_timeout: float
    ) -> urllib3.BaseHTTPResponse:
        """One GET through the client's pool: its TLS and proxy settings, current credentials."""
        return self._api.request("GET", path, query, read_timeout=read_timeout)

    def _open(self, request: Callable[[], Any]) -> Any:
        """Send a request and remember its response so that stop() can abort it."""
        if self._stopping.is_set():
            raise _Stopping
        response = request()
        with self._response_lock:
            self._response = response
        # stop() sets the flag before it looks for a response, so either it
        # saw this response or we see the flag here.
        if self._stopping.is_set():
            self._release(response, complete=False)
            raise _Stopping
        return response

    def _release(self, response: Any, *, complete: bool) -> None:
        with self._response_lock:
            if self._response is response:
                self._response = None
        if not complete:
            # Unread bytes would be the next request's garbage: drop the connection.
            response.close()
        response.release_conn()

    def _abort_response(self) -> None:
        with self._response_lock:
            response = self._response
        if response is not None:
            _shutdown(response)

    def _failed(self, err: Exception, delay: float) -> None:
        """Log a failure: a warning at most once a ``warn_every``, the rest at debug level."""
        self._failures += 1
        self._failures_unreported += 1
        expected = isinstance(err, (OSError, ValueError, kube.ResponseError)) or (
            type(err).__module__.startswith("urllib3")
        )
        if self._throttle.allow("failure", self._clock()):
            unreported = self._failures_unreported
            log.warning(
                "namespace watch on %s failed: %s; retry %d in %.3gs (%d failure%s since the"
                " last warning), serving %d cached namespaces",
                self.host,
                _one_line(err),
                self._backoff.streak,
                delay,
                unreported,
                "" if unreported == 1 else "s",
                len(self._items),
                # A traceback only for what is not a network or server problem (a bug).
                exc_info=None if expected else err,
            )
            self._failures_unreported = 0
        else:
            log.debug(
                "namespace watch failed: %s; retry %d in %.3fs",
                _one_line(err),
                self._backoff.streak,
                delay,
            )

    def _recovered(self) -> None:
        """The server sent data (a list, an event): the end of a failure streak, for the log."""
        if not self._failures:
            return
        if self._throttle.allow("recovered", self._clock()):
            log.info(
                "namespace watch on %s: in sync again after %d failed attempts",
                self.host,
                self._failures,
            )
        self._failures = 0

    def _cache_full(self, first: str, count: int) -> None:
        self._note(
            "full",
            "namespace cache: %d namespaces (first %s) do not fit in its %d MiB; they are read"
            " from the API server on each admission instead",
            count,
            first,
            self._max_cache_bytes // _MiB,
        )

    def _note(
        self, kind: str, message: str, *args: object, exc_info: BaseException | None = None
    ) -> None:
        """A warning about the data, throttled per kind like the failure warnings."""
        level = logging.WARNING if self._throttle.allow(kind, self._clock()) else logging.DEBUG
        log.log(level, message, *args, exc_info=exc_info)


class _Backoff:
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


class _Throttle:
    """At most one log line per kind per ``interval``: an outage costs lines, not one per retry."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}

    def allow(self, kind: str, now: float) -> bool:
        """Whether a line of ``kind`` may be logged at ``now`` (and if so, remember it)."""
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            return False
        self._last[kind] = now
        return True


def _parse(obj: Any) -> NamespaceInfo:
    """A Namespace object as the cache keeps it: labels, and only the sidecar annotations.

    Raises ``ValueError`` (or ``AttributeError`` for a non-object) when it is
    not a usable Namespace.
    """
    info = NamespaceInfo.from_object(obj)
    kept = {k: v for k, v in info.annotations.items() if k.startswith(constants.PREFIX)}
    if len(kept) == len(info.annotations):
        return info
    return NamespaceInfo(info.name, info.labels, MappingProxyType(kept))


def _estimated_bytes(info: NamespaceInfo) -> int:
    """A generous estimate of the memory a cached entry takes (a test checks it with tracemalloc).

    The strings' own sizes, plus room for the entry (the object, two maps and
    the cache's dict slot) and for each map slot.
    """
    size = 700 + sys.getsizeof(info.name)
    for mapping in (info.labels, info.annotations):
        for key, value in mapping.items():
            size += 100 + sys.getsizeof(key) + sys.getsizeof(value)
    return size


# The plumbing lives in webhook.cluster.kube; these names keep this module's code short.
_read_body = kube.read_body
_check_encoding = kube.check_encoding
_is_not_found = kube.is_not_found
_lines = kube.lines
_deadline = kube.deadline
_shutdown = kube.shutdown
_one_line = kube.one_line
