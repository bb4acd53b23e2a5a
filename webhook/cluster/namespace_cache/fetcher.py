"""Reads of one namespace the watch has not delivered yet: single-flight, bounded, never stale.

A Deployment scaled up in a brand-new namespace sends one admission per
replica; a burst of new namespaces (or ``/preview?namespace=`` calls) sends
many. So the reads run on a small pool of threads (``fetch_threads``), at most
``max_fetches_in_flight`` distinct namespaces are read at once (one more is
refused, not queued), and callers of one name share a GET, but only one that
has not been sent yet: a caller may need a label set after an earlier GET
read the namespace, so it waits for the next GET, queued behind the one under
way. Any number of callers cost at most two GETs per name at a time.

Each caller waits at most ``timeout``, or until ``stop()``. A namespace read
this way is put in the store only under the store's removal rule
(``NamespaceStore.put_fetched``), so a read never resurrects a namespace the
watch deleted while the GET was in flight; one the GET found missing is
remembered as absent for ``absent_seconds`` under the mirror rule
(``NamespaceStore.put_absent``).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from webhook.cluster import kube
from webhook.cluster.namespace_cache.store import NamespaceStore
from webhook.cluster.namespace_cache.throttle import ThrottledLog
from webhook.contract.namespaces import NamespaceInfo, NamespaceUnavailable
from webhook.engine.values import is_namespace_name

# Reads one namespace (a GET): the namespace, None when it does not exist, or
# NamespaceUnavailable with one line naming it.
Read = Callable[[str], NamespaceInfo | None]


@dataclass
class _Fetches:
    """One name's GET under way (or waiting for a fetch thread), and the one queued behind it."""

    current: Future[NamespaceInfo | None]
    queued: Future[NamespaceInfo | None] | None = None


def _stopped_error(name: str) -> NamespaceUnavailable:
    return NamespaceUnavailable(f"namespace {name}: the namespace source is stopped")


def _pass_on(
    target: Future[NamespaceInfo | None], name: str, source: Future[NamespaceInfo | None]
) -> None:
    """Give the callers of a queued fetch the outcome of the GET sent for them."""
    if source.cancelled():  # stop() cancelled it before a thread took it
        target.set_exception(_stopped_error(name))
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


class Fetcher:
    """Single-flight reads through ``read`` on ``threads`` threads; callers wait ``timeout``."""

    def __init__(
        self,
        read: Read,
        store: NamespaceStore,
        *,
        timeout: float,
        threads: int,
        max_in_flight: int,
        notes: ThrottledLog,
        absent_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._store = store
        self._absent_seconds = absent_seconds
        self._clock = clock
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        self._notes = notes
        # Per name, the GET under way and the one queued behind it. Re-entrant:
        # a future's done-callback may run in the thread that submitted it.
        self._inflight: dict[str, _Fetches] = {}
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="namespace-fetch")
        # Done when stop() is called, so fetches waiting for a GET return at once.
        self._stopped: Future[None] = Future()

    def fetch(self, name: str) -> NamespaceInfo | None:
        """The namespace as read by a GET sent after this call; None when it does not exist.

        Raises ``NamespaceUnavailable`` (one line, naming the namespace) for
        every other outcome: the read failed, no answer within ``timeout``,
        too many namespaces in flight, a stopped fetcher. A name no namespace
        can have is None at once, without a request.
        """
        if not is_namespace_name(name):
            return None  # the API server could not hold such a namespace
        future = self._join_or_send(name)
        either: list[Future[Any]] = [future, self._stopped]
        done, _ = wait(either, self._timeout, FIRST_COMPLETED)
        if future not in done:
            if self._stopped.done():
                raise _stopped_error(name)
            raise NamespaceUnavailable(
                f"namespace {name}: no answer from the API server within {self._timeout:g}s"
            )
        try:
            return future.result()
        except CancelledError:
            raise _stopped_error(name) from None
        except NamespaceUnavailable as err:
            # A fresh exception per caller: several threads may share the future.
            raise NamespaceUnavailable(str(err)) from None
        except Exception as err:  # a bug, not the server: say so once, still fail closed
            self._notes.warn(
                "fetch-bug", "namespace %s: fetch failed unexpectedly", name, exc_info=err
            )
            raise NamespaceUnavailable(f"namespace {name}: {kube.one_line(err)}") from None

    def stop(self) -> None:
        """Release every waiting caller and drop the reads not started; later fetches fail."""
        if not self._stopped.done():
            self._stopped.set_result(None)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _join_or_send(self, name: str) -> Future[NamespaceInfo | None]:
        """The future this caller waits on: a GET not sent yet, or a new one."""
        with self._lock:
            fetches = self._inflight.get(name)
            if fetches is None:
                self._admit(name)
                future = self._submit(name)
                self._inflight[name] = _Fetches(future)
                # After the entry exists: a callback on a done future runs at once.
                future.add_done_callback(functools.partial(self._fetched, name))
                return future
            if not fetches.current.running() and not fetches.current.done():
                return fetches.current  # still waiting for a fetch thread: not sent yet
            if fetches.queued is None:
                fetches.queued = Future()
            return fetches.queued

    def _admit(self, name: str) -> None:
        """Refuse a read of one more distinct namespace past the bound (under ``_lock``)."""
        if len(self._inflight) >= self._max_in_flight:
            raise NamespaceUnavailable(
                f"namespace {name}: {len(self._inflight)} other namespaces are being"
                " read from the API server already"
            )

    def _read_and_keep(self, name: str, removals: int) -> NamespaceInfo | None:
        """Read ``name`` (in a fetch thread); ``removals`` is the store's count from before."""
        info = self._read(name)
        if info is not None:
            self._store.put_fetched(info, removals=removals)
        elif self._absent_seconds > 0:
            self._store.put_absent(name, now=self._clock(), seconds=self._absent_seconds)
        return info

    def _submit(self, name: str) -> Future[NamespaceInfo | None]:
        """Hand a GET of ``name`` to the fetch threads (under ``_lock``)."""
        try:
            # The removal count from before the GET is sent (see put_fetched).
            return self._pool.submit(self._read_and_keep, name, self._store.removals)
        except RuntimeError:  # the pool is shut down
            raise _stopped_error(name) from None

    def _fetched(self, name: str, done: Future[NamespaceInfo | None]) -> None:
        """A GET ended: send the one queued behind it, if any, else forget the name."""
        with self._lock:
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
