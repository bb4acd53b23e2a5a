"""The Event sender: admissions hand it occurrences, one thread writes them to the API server.

``record`` runs on the event loop after an answer is decided: it classifies
the admission (``model.occurrence``) and counts it into the series table
under a lock, a few dictionary operations, and returns. Nothing on the
request path waits for the API server, whatever it does (slow, down,
refusing): the writes happen in the sender's one daemon thread, which the
app's lifespan starts and stops.

Bounds, each with its reason:

- the table holds at most ``max_series`` series (2,048; an entry is an
  Event of at most a few KiB): a burst of pods from one ReplicaSet is one
  entry, so only many distinct owners at once can fill it, and then new
  ones are dropped and counted rather than queued without end;
- writes (creates and series updates) go through a token bucket of
  ``rate`` a second with a ``burst`` (5 and 25): 5 a second is client-go's
  default rate for a whole client, and 25 the burst its legacy event spam
  filter allows per object. Events are a courtesy to users; the API server's
  capacity belongs to the pods being created, and with the series, writes
  grow with the number of owners, not pods;
- each write is bounded in time (``write_timeout``) and bytes
  (``webhook.cluster.events_api``), and none is retried;
- on stop, pending writes get ``stop_timeout`` seconds (they fit in the
  pod's termination grace period with the drain), then are dropped and
  counted.

Every occurrence ends in exactly one ``outcome`` of
``sidecar_injector_events_total``: ``sent`` (the API server has it, in an
Event or a series count), ``failed`` (its write failed), ``dropped`` (never
written); ``sidecar_injector_events_pending`` counts those not decided yet.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from webhook.service.events.bucket import TokenBucket
from webhook.service.events.model import occurrence
from webhook.service.events.series import Observed, SeriesTable, Write
from webhook.service.metrics import Metrics

if TYPE_CHECKING:
    from webhook.service.admission import Reviewed

log = logging.getLogger("webhook.events")

# How often ended series are forgotten (each sweep looks at every idle one).
SWEEP_SECONDS: Final = 30.0
# At most one log line about failed writes this often: an API server refusing
# every Event would otherwise log at the write rate.
LOG_EVERY: Final = 60.0


class EventWriter(Protocol):
    """Where Events go (``webhook.cluster.events_api.EventsAPI`` fits).

    Both raise an exception with a one-line message when the write fails; a
    ``not_found`` attribute that is true means the Event to patch is gone.
    """

    def create(self, event: Mapping[str, Any], *, timeout: float) -> None: ...

    def patch(
        self, namespace: str, name: str, patch: Mapping[str, Any], *, timeout: float
    ) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class EventOptions:
    """Bounds and timings of the sender (module docstring); tests shrink the timings."""

    max_series: int = 2048
    rate: float = 5.0
    burst: int = 25
    window: float = 360.0
    flush: float = 10.0
    write_timeout: float = 5.0
    stop_timeout: float = 2.0


class EventRecorder:
    """Counts admissions into series and writes them from its own thread (module docstring)."""

    def __init__(
        self,
        writer: EventWriter,
        metrics: Metrics,
        *,
        instance: str,
        options: EventOptions | None = None,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.options = opts = options if options is not None else EventOptions()
        self._writer = writer
        self._metrics = metrics
        self._mono = mono
        self._wall = wall
        self._table = SeriesTable(
            max_series=opts.max_series, window=opts.window, flush=opts.flush, instance=instance
        )
        self._bucket = TokenBucket(rate=opts.rate, burst=opts.burst, now=mono())
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._swept_at = mono()
        self._failures = 0
        self._logged_at = -math.inf
        metrics.events_pending.set_function(lambda: self._table.unsent)

    # -- the request path ------------------------------------------------------

    def record(self, reviewed: Reviewed) -> None:
        """Count one answered admission (nothing for dry runs); never blocks on I/O."""
        summary = reviewed.request
        if summary.dry_run or summary.owner is None:
            return
        response = reviewed.response
        found = occurrence(
            summary.owner,
            code=reviewed.code,
            allowed=response["allowed"],
            patched="patch" in response,
            message=reviewed.reason,
        )
        if found is None:
            return
        with self._wake:
            observed, wake = self._table.observe(found, mono=self._mono(), wall=self._wall())
            if wake:
                self._wake.notify()
        if observed is Observed.DROPPED:
            self._metrics.event(found.reason, "dropped")

    # -- lifetime --------------------------------------------------------------

    def start(self) -> None:
        """Start the sender thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="event-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is pending for up to ``stop_timeout`` s, drop the rest, end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        thread = self._thread
        if thread is not None:
            # A write started before the stop may run to its own timeout; the
            # thread is a daemon, so the process does not wait for it.
            thread.join(self.options.stop_timeout + 0.5)
        with self._wake:
            dropped = self._table.drop_all()
        for reason, count in dropped.items():
            self._metrics.event(reason, "dropped", count)
        if dropped:
            log.warning(
                "%d event occurrences were not written before stopping", sum(dropped.values())
            )
        self._writer.close()

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stopping

    # -- the sender thread -----------------------------------------------------

    def _run(self) -> None:
        stop_by: float | None = None
        while True:
            write, stop_by = self._next(stop_by)
            if write is None:
                return
            timeout = self.options.write_timeout
            if stop_by is not None:
                timeout = min(timeout, max(0.01, stop_by - self._mono()))
            self._send(write, timeout)

    def _next(self, stop_by: float | None) -> tuple[Write | None, float | None]:
        """The next write once one is due and a token is there; ``None`` ends the thread.

        After ``stop()``, every pending write is due at once and they get
        ``stop_timeout`` seconds in all (``stop_by``, returned for the caller).
        """
        with self._wake:
            while True:
                mono = self._mono()
                if self._stopping and stop_by is None:
                    stop_by = mono + self.options.stop_timeout
                if stop_by is not None and mono >= stop_by:
                    return None, stop_by
                if mono - self._swept_at >= SWEEP_SECONDS:
                    self._table.sweep(mono)
                    self._swept_at = mono
                final = stop_by is not None
                due = self._table.due_in(mono, final=final)
                if due == 0.0:
                    wait = self._bucket.take(mono)
                    if wait == 0.0:
                        wall_ns = int(self._wall() * 1e9)
                        write = self._table.take(mono=mono, wall_ns=wall_ns, final=final)
                        if write is not None:
                            return write, stop_by
                    due = wait
                if final and due is None:
                    return None, stop_by  # all written
                if due is None and len(self._table):
                    due = SWEEP_SECONDS
                if stop_by is not None:
                    due = stop_by - mono if due is None else min(due, stop_by - mono)
                self._wake.wait(due)

    def _send(self, write: Write, timeout: float) -> None:
        reason = write.series.occurrence.reason
        try:
            if write.kind == "create":
                self._writer.create(write.body, timeout=timeout)
            else:
                namespace = write.series.occurrence.owner.namespace
                self._writer.patch(namespace, write.name, write.body, timeout=timeout)
        except Exception as err:  # the writer's errors, and any bug: never the thread's end
            not_found = bool(getattr(err, "not_found", False))
            self._metrics.event_write(write.kind, "error")
            with self._wake:
                done = self._table.done(write, ok=False, not_found=not_found, mono=self._mono())
            if done.failed:
                self._metrics.event(reason, "failed", done.failed)
            if not_found and write.kind == "patch":
                return  # the Event expired: it is created again, nothing to report
            owner = write.series.occurrence.owner
            self._note_failure(
                f"could not {write.kind} the {reason} Event for {owner.kind} "
                f"{owner.namespace}/{owner.name}: {err}"
            )
            return
        self._metrics.event_write(write.kind, "ok")
        with self._wake:
            done = self._table.done(write, ok=True, mono=self._mono())
        if done.sent:
            self._metrics.event(reason, "sent", done.sent)

    def _note_failure(self, message: str) -> None:
        """Log a failed write: the first, then at most one line per ``LOG_EVERY`` seconds."""
        mono = self._mono()
        self._failures += 1
        if mono - self._logged_at < LOG_EVERY:
            return
        more = self._failures - 1
        also = f" ({more} more failed writes since the last such line)" if more else ""
        log.warning("%s%s", message, also)
        self._logged_at = mono
        self._failures = 0
