"""A watch-backed cache of the cluster's Namespaces (the only module that imports ``kubernetes``).

Admission must not make an API call per request, so one daemon thread keeps a
copy of every Namespace's labels and annotations: it lists them, then watches
from the list's resourceVersion, and on "410 Gone" (history compacted while
we were away) lists again. Any other failure (connection refused, timeouts,
a broken stream) is retried with capped exponential backoff and jitter while
the cache keeps serving what it last knew: a webhook that refused pods whenever
the API server blinked would turn an API server hiccup into an outage.

The client's typed models are not used: requests ask for the raw response
(``_preload_content=False``) and objects stay plain dicts, so nothing the
server sends is dropped or renamed, and the thread owns the open response,
which ``stop()`` aborts instead of waiting for the server-side watch timeout.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson
from kubernetes import client as kube_client
from kubernetes import config as _kube_config
from kubernetes.client.exceptions import ApiException

# Not webhook.namespaces: that module chooses (and so imports) this one.
from webhook.namespace_types import (
    Freshness,
    NamespaceInfo,
    NamespaceSourceError,
    NamespaceUnavailable,
    running_in_cluster,
)

log = logging.getLogger("webhook.namespaces")

# The config loaders carry partial annotations that mypy --strict rejects.
kube_config: Any = _kube_config

_GONE = 410
_NOT_FOUND = 404
# How long a watch may stay silent before it counts as a dead connection (a
# half-open TCP connection after a node or network change never says so).
# kube-apiserver's watch cache (k8s.io/apiserver pkg/storage/cacher, v1.37:
# defaultBookmarkFrequency = 1 minute) sends a watch that allows bookmarks a
# BOOKMARK about once a minute, plus one 2 s before the watch's timeout, and
# checks which watchers are due every 1-1.25 s. So a healthy watch is never
# silent much over 61 s; 90 s leaves half a minute for a loaded server. On a
# server without a watch cache (no bookmarks) a quiet watch is renewed every
# 90 s from where it was: one cheap request, no relist.
_READ_TIMEOUT_SECONDS = 90.0


class _Expired(Exception):
    """The watch's resourceVersion is older than the server's history: list again."""


class _WatchError(Exception):
    """The server ended the watch with an error other than 410."""


class _Stopping(Exception):
    """``stop()`` was called while a request was being opened."""


class KubeNamespaceCache:
    """Namespaces of a cluster, kept current by list+watch in one daemon thread.

    ``cached`` reads a dict (no I/O, no locks) and is safe on the event loop;
    ``fetch`` does one ``GET`` with a short timeout for a namespace the watch
    has not delivered yet. Ready after the first successful list, and stays
    ready while the API server is unreachable: the cache then serves what it
    last knew, which beats refusing or un-injecting every pod.

    The timing parameters exist so tests can run in seconds; the defaults suit
    a cluster. ``watch_timeout_seconds`` is the shortest server-side watch
    timeout: each watch asks for a random value between it and twice it, so
    many replicas do not renew their watches in lockstep. ``read_timeout`` is
    how long a watch may be silent before it is abandoned and resumed.
    """

    def __init__(
        self,
        configuration: Any,
        *,
        watch_timeout_seconds: float = 300.0,
        list_timeout: float = 30.0,
        fetch_timeout: float = 2.0,
        connect_timeout: float = 5.0,
        read_timeout: float = _READ_TIMEOUT_SECONDS,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        stop_timeout: float = 2.0,
        warn_every: float = 60.0,
        healthy_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        config = copy.deepcopy(configuration)
        # This class retries with its own backoff; urllib3's default retries
        # would also multiply fetch()'s timeout by four on a hung server.
        config.retries = False
        self._api_client: Any = kube_client.ApiClient(config)
        self._api: Any = kube_client.CoreV1Api(self._api_client)
        self.host: str = config.host
        self._watch_timeout = max(1.0, watch_timeout_seconds)
        self._list_timeout = list_timeout
        self._fetch_timeout = fetch_timeout
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._stop_timeout = stop_timeout
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
        self._write_lock = threading.Lock()
        # Bumped (under _write_lock) whenever the watch removes namespaces: a
        # DELETED event or a relist. A fetch caches its answer only if this
        # did not change while its GET was in flight (see _store_fetched).
        self._removals = 0
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # The response the thread is reading, so stop() can cut it off.
        self._response: Any = None
        self._response_lock = threading.Lock()
        # One GET per name at a time: a Deployment scaled up in a brand-new
        # namespace should not send one request per replica.
        self._inflight: dict[str, Future[NamespaceInfo | None]] = {}
        self._inflight_lock = threading.Lock()
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

    @classmethod
    def from_environment(
        cls, kubeconfig: Path | None = None, *, in_cluster: bool | None = None, **options: Any
    ) -> KubeNamespaceCache:
        """A cache configured like ``kubectl`` would be, inside or outside a cluster.

        An explicit ``kubeconfig`` wins; otherwise the pod's service account
        when running in a cluster; otherwise ``$KUBECONFIG`` or
        ``~/.kube/config``. Raises ``NamespaceSourceError`` with one line.
        """
        config = kube_client.Configuration()
        if kubeconfig is None and (running_in_cluster() if in_cluster is None else in_cluster):
            where = "in-cluster service account"
            load: Callable[[], None] = lambda: kube_config.load_incluster_config(  # noqa: E731
                client_configuration=config
            )
        else:
            where = f"kubeconfig {kubeconfig}" if kubeconfig else "kubeconfig"
            load = lambda: kube_config.load_kube_config(  # noqa: E731
                config_file=str(kubeconfig) if kubeconfig else None,
                client_configuration=config,
                # Never write refreshed credentials back into the user's file.
                persist_config=False,
            )
        try:
            load()
        except Exception as err:  # the loaders raise many types; all mean "cannot configure"
            raise NamespaceSourceError(
                f"cannot configure the Kubernetes client from the {where}: {_one_line(err)}"
            ) from None
        return cls(config, **options)

    # -- NamespaceSource ------------------------------------------------------

    def cached(self, name: str) -> NamespaceInfo | None:
        """The namespace as the watch last saw it; a dict lookup, no I/O."""
        return self._items.get(name)

    def fetch(self, name: str) -> NamespaceInfo | None:
        """Read one namespace from the API server (for one the watch has not delivered yet).

        Blocks at most about ``fetch_timeout``. ``None`` when it does not
        exist; ``NamespaceUnavailable`` when the API server does not answer.
        """
        with self._inflight_lock:
            pending = self._inflight.get(name)
            if pending is None:
                mine: Future[NamespaceInfo | None] = Future()
                self._inflight[name] = mine
        if pending is not None:
            try:
                return pending.result(timeout=self._fetch_timeout + 1.0)
            except TimeoutError:
                raise NamespaceUnavailable(f"namespace {name}: no answer in time") from None
        try:
            result = self._read(name, removals=self._removals)
        except BaseException as err:
            mine.set_exception(err)
            raise
        else:
            mine.set_result(result)
            return result
        finally:
            with self._inflight_lock:
                self._inflight.pop(name, None)

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

        Final: a stopped cache is not started again (make a new one).
        """
        self._stopping.set()
        self._abort_response()
        thread = self._thread
        if thread is None:
            return
        thread.join(self._stop_timeout)
        if thread.is_alive():  # pragma: no cover - a request stuck in connect()
            log.warning("namespace watch did not stop within %.1fs", self._stop_timeout)
        else:
            self._api_client.close()

    def freshness(self) -> Freshness:
        """Cache age (since the last list, event or BOOKMARK), watch reconnects and relists.

        Before the first list the age counts from ``start()``. On a healthy
        cluster the age stays under about a minute (the API server's bookmark
        interval) and rises past ``read_timeout`` only when the watch is down.
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
                # Normal after a long disconnect or an etcd compaction.
                log.info("namespace watch: %s; listing again", err)
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
        response = self._open(
            lambda: self._api.list_namespace(
                _preload_content=False,
                _request_timeout=(self._connect_timeout, self._list_timeout),
            )
        )
        try:
            body = response.data
        finally:
            self._release(response)
        document = orjson.loads(body)
        metadata = document.get("metadata") or {}
        resource_version = metadata.get("resourceVersion")
        if not isinstance(resource_version, str) or not resource_version:
            raise ValueError("the namespace list has no metadata.resourceVersion")
        fresh: dict[str, NamespaceInfo] = {}
        for obj in document.get("items") or []:
            info = _info(obj)
            if info is not None:
                fresh[info.name] = info
        with self._write_lock:
            # A swap, not an update: namespaces deleted while we were away vanish.
            self._items = fresh
            self._removals += 1
        self._resume_from = resource_version
        self._synced_at = self._clock()
        self._recovered()
        first = not self._ready.is_set()
        if not first:
            self._relists += 1
        self._ready.set()
        log.info(
            "namespace watch: %s %d namespaces from %s at resourceVersion %s",
            "listed" if first else "relisted",
            len(fresh),
            self.host,
            resource_version,
        )

    def _watch(self) -> None:
        """Apply watch events until the server ends the watch, advancing the resume point."""
        resource_version = self._resume_from
        if resource_version is None:  # pragma: no cover - _run lists first
            raise _Expired("no resourceVersion to watch from")
        # Random in [t, 2t) so replicas spread their renewals.
        timeout = int(self._watch_timeout * (1.0 + self._rng.random()))
        self._watches += 1
        started = time.monotonic()
        try:
            response = self._open(
                lambda: self._api.list_namespace(
                    watch=True,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=timeout,
                    _preload_content=False,
                    # Not the watch's own timeout plus slack: that left a
                    # half-open connection unnoticed for up to 10.5 minutes.
                    _request_timeout=(self._connect_timeout, self._read_timeout),
                )
            )
        except ApiException as err:
            if err.status == _GONE:
                raise _Expired(
                    f"resourceVersion {resource_version} is too old (HTTP 410)"
                ) from None
            raise
        # Not a recovery yet: a server can accept every watch and fail it at
        # once. Only data (an applied event) counts, see _apply.
        events = 0
        try:
            for line in _lines(response):
                self._apply(line)
                events += 1
        finally:
            self._release(response, abort=True)
        if events == 0 and time.monotonic() - started < min(1.0, timeout / 2):
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
        if kind in ("ADDED", "MODIFIED"):
            info = _info(obj)
            if info is not None:
                with self._write_lock:
                    self._items[info.name] = info
        elif kind == "DELETED":
            name = metadata.get("name")
            if isinstance(name, str):
                with self._write_lock:
                    # Counted even for a name not cached: a fetch of it may be
                    # in flight, and must not bring it back.
                    self._items.pop(name, None)
                    self._removals += 1
        elif kind != "BOOKMARK":
            log.debug("namespace watch: ignoring event type %r", kind)
        # An event or a BOOKMARK says the cache holds everything up to it.
        self._synced_at = self._clock()
        self._recovered()
        latest = metadata.get("resourceVersion")
        if isinstance(latest, str) and latest:
            # Every applied event and BOOKMARK moves the resume point, so a
            # broken stream continues here rather than where it started.
            self._resume_from = latest

    def _read(self, name: str, *, removals: int) -> NamespaceInfo | None:
        """GET one namespace; ``removals`` is the removal count from before the GET was sent."""
        try:
            response = self._api.read_namespace(
                name, _preload_content=False, _request_timeout=self._fetch_timeout
            )
            try:
                body = response.data
            finally:
                response.release_conn()
            info = NamespaceInfo.from_object(orjson.loads(body))
        except ApiException as err:
            if err.status == _NOT_FOUND:
                return None
            raise NamespaceUnavailable(f"namespace {name}: {_one_line(err)}") from None
        except Exception as err:  # connection refused, timeout, a garbled body
            raise NamespaceUnavailable(f"namespace {name}: {_one_line(err)}") from None
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
        with self._write_lock:
            if self._removals == removals:
                self._items.setdefault(info.name, info)

    # -- plumbing ---------------------------------------------------------------

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
            self._release(response, abort=True)
            raise _Stopping
        return response

    def _release(self, response: Any, *, abort: bool = False) -> None:
        with self._response_lock:
            if self._response is response:
                self._response = None
        if abort:
            # A watch cut off mid-stream leaves its connection unusable.
            response.close()
        response.release_conn()

    def _abort_response(self) -> None:
        with self._response_lock:
            response = self._response
        if response is None:
            return
        # Shutting the socket down wakes the thread blocked in recv(); closing
        # the response object from another thread would not.
        connection = getattr(response, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            # Already closed is fine: the thread is on its way out anyway.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _failed(self, err: Exception, delay: float) -> None:
        """Log a failure: a warning at most once a ``warn_every``, the rest at debug level."""
        self._failures += 1
        self._failures_unreported += 1
        expected = isinstance(err, (ApiException, OSError, ValueError, _WatchError)) or (
            type(err).__module__.startswith("urllib3")
        )
        if self._throttle.allow("failure", self._clock()):
            log.warning(
                "namespace watch on %s failed (%d in a row, %d since the last warning): %s;"
                " retrying in %.3gs, serving %d cached namespaces",
                self.host,
                self._failures,
                self._failures_unreported,
                _one_line(err),
                delay,
                len(self._items),
                # A traceback only for what is not a network or server problem (a bug).
                exc_info=None if expected else err,
            )
            self._failures_unreported = 0
        else:
            log.debug(
                "namespace watch failed again (%d in a row), retrying in %.3fs: %s",
                self._failures,
                delay,
                _one_line(err),
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


def _info(obj: Any) -> NamespaceInfo | None:
    """The NamespaceInfo of a listed/watched object; a malformed one is logged and skipped."""
    try:
        return NamespaceInfo.from_object(obj)
    except (ValueError, AttributeError) as err:
        log.warning("namespace watch: skipping a malformed Namespace: %s", err)
        return None


def _lines(response: Any) -> Iterator[bytes]:
    """Newline-delimited watch events as they arrive (the server sends them chunked)."""
    buffer = bytearray()
    for chunk in response.stream(amt=None, decode_content=False):
        buffer.extend(chunk)
        while (end := buffer.find(b"\n")) != -1:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield line
    if buffer.strip():
        yield bytes(buffer)


def _one_line(err: BaseException) -> str:
    """A short, single-line description of an error for the log and for warnings."""
    if isinstance(err, ApiException):
        detail = err.reason or ""
        try:
            status = orjson.loads(err.body) if err.body else None
        except orjson.JSONDecodeError:
            status = None
        if isinstance(status, dict) and status.get("message"):
            detail = status["message"]
        text = f"HTTP {err.status} {detail}" if err.status else str(detail)
    else:
        reason = getattr(err, "reason", None)  # urllib3's MaxRetryError wraps the real cause
        cause = reason if isinstance(reason, BaseException) else err
        text = f"{type(cause).__name__}: {cause}"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."
