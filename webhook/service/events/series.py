"""Series of equal occurrences, as client-go's event recorder keeps them, and the writes they need.

client-go (``k8s.io/client-go/tools/events``) creates an Event the first
time something happens; when the same thing (same owner, reason, action)
happens again while the Event is fresh, it counts the repeat in the Event's
``series`` (count, last observed time) instead of creating another Event.
The table here does the same, keyed by the whole :class:`Occurrence` (the
note included, so a changed refusal message is a new Event), with three
differences that suit an admission webhook:

- the count is written at most once per ``flush`` seconds per series
  (client-go: at the second occurrence, then every 30 minutes), so
  ``kubectl describe`` is at most that far behind while a ReplicaSet scales;
- a series ends ``window`` seconds after its last occurrence (client-go's
  six minutes); a repeat after that starts a new Event;
- the table is bounded (``max_series``): past it, a series whose writes are
  all done is forgotten to make room (a repeat then starts a new Event), and
  when every entry still waits for a write, the new occurrence is dropped.

The table is the sender's queue of pending writes: one entry per series,
never one per admission, so 1,000 pods of one ReplicaSet are one entry and a
handful of writes. Not thread-safe: the recorder holds its lock around every
call. Times are the caller's: ``mono`` (monotonic seconds) for the
windows, ``wall`` (Unix time) for what the Event says.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from webhook.service.events.model import Occurrence, event_body, event_name, series_of


class Observed(enum.Enum):
    """What :meth:`SeriesTable.observe` did with an occurrence."""

    NEW = "new"  # a new series: its Event is to be created
    REPEAT = "repeat"  # counted in a series already known
    DROPPED = "dropped"  # no room: every series in the table still waits for a write


@dataclass(slots=True, eq=False)
class Series:
    """One series: its occurrences so far, and what the API server has of them."""

    occurrence: Occurrence
    first_seen: float  # wall
    last_seen: float  # wall
    seen_at: float  # mono, of the last occurrence
    count: int = 1
    name: str | None = None  # the Event's, once created
    written: int = 0  # occurrences the API server has (the count last written)
    written_at: float = -math.inf  # mono
    in_flight: bool = False


@dataclass(frozen=True, slots=True)
class Write:
    """One request to make: create the Event, or patch its series."""

    series: Series
    kind: Literal["create", "patch"]
    name: str
    count: int  # the count this write gives the API server
    body: dict[str, Any]  # the Event, or the merge patch


@dataclass(frozen=True, slots=True)
class Done:
    """What a write's result did to the counts: occurrences now sent, or failed."""

    sent: int = 0
    failed: int = 0


class SeriesTable:
    """The series being counted, and the writes they need (module docstring)."""

    def __init__(self, *, max_series: int, window: float, flush: float, instance: str) -> None:
        self.max_series = max_series
        self.window = window
        self.flush = flush
        self.instance = instance
        self._series: dict[Occurrence, Series] = {}
        # The same series, by what they wait for; insertion order is the
        # order in which they started waiting.
        self._creates: dict[Occurrence, None] = {}
        self._patches: dict[Occurrence, None] = {}
        self._idle: dict[Occurrence, None] = {}  # all written, nothing in flight
        self._last_name = 0
        # Occurrences counted but neither written nor failed nor dropped yet.
        self.unsent = 0

    def __len__(self) -> int:
        return len(self._series)

    def observe(self, found: Occurrence, *, mono: float, wall: float) -> tuple[Observed, bool]:
        """Count one occurrence; also whether the sender has a new write to look at."""
        series = self._series.get(found)
        if series is not None and (mono - series.seen_at <= self.window or found not in self._idle):
            series.count += 1
            series.last_seen = wall
            series.seen_at = mono
            self.unsent += 1
            if found not in self._idle:
                return Observed.REPEAT, False
            del self._idle[found]
            self._patches[found] = None
            return Observed.REPEAT, True
        if series is not None:  # its series ended: this one starts a new Event
            self._forget(found)
        if len(self._series) >= self.max_series and not self._evict():
            return Observed.DROPPED, False
        self._series[found] = Series(found, wall, wall, mono)
        self._creates[found] = None
        self.unsent += 1
        return Observed.NEW, True

    def due_in(self, mono: float, *, final: bool = False) -> float | None:
        """Seconds until a write is due (0.0: one is due now), ``None`` when nothing waits.

        A create is due at once; a series count at most once per ``flush``
        seconds, or at once when ``final`` (the sender is stopping). Writes
        in flight do not count.
        """
        if any(not self._series[f].in_flight for f in self._creates):
            return 0.0
        earliest: float | None = None
        for found in self._patches:
            series = self._series[found]
            if not series.in_flight:
                due = 0.0 if final else max(0.0, series.written_at + self.flush - mono)
                earliest = due if earliest is None else min(earliest, due)
        return earliest

    def take(self, *, mono: float, wall_ns: int, final: bool = False) -> Write | None:
        """The write that is due, marked in flight: creates first, oldest first."""
        for found in self._creates:
            series = self._series[found]
            if not series.in_flight:
                return self._create(series, wall_ns)
        for found in self._patches:
            series = self._series[found]
            if not series.in_flight and (final or series.written_at + self.flush <= mono):
                return self._patch(series)
        return None

    def done(self, write: Write, *, ok: bool, not_found: bool = False, mono: float) -> Done:
        """Record a write's result.

        A patch the API server answers with NotFound (the Event expired) is
        made again as a create carrying the whole count. Any other failure
        ends the series: its unwritten occurrences count as failed, and a
        later one starts a new Event (no retries: the next occurrence is
        the retry, and the rate limit spaces them).
        """
        series = write.series
        series.in_flight = False
        found = series.occurrence
        if self._series.get(found) is not series:
            return Done()  # forgotten meanwhile (drop_all): already counted
        if ok:
            sent = max(0, write.count - series.written)
            series.written = max(series.written, write.count)
            series.name = write.name
            series.written_at = mono
            self.unsent -= sent
            self._file(series)
            return Done(sent=sent)
        if write.kind == "patch" and not_found:
            series.name = None
            self._file(series)
            return Done()
        failed = series.count - series.written
        self.unsent -= failed
        self._forget(found)
        return Done(failed=failed)

    def sweep(self, mono: float) -> int:
        """Forget series that ended (all written, no occurrence for ``window``); how many."""
        ended = [f for f in self._idle if mono - self._series[f].seen_at > self.window]
        for found in ended:
            self._forget(found)
        return len(ended)

    def drop_all(self) -> Counter[str]:
        """Forget everything (the sender stops): the occurrences never written, by reason."""
        dropped: Counter[str] = Counter()
        for series in self._series.values():
            if series.count > series.written:
                dropped[series.occurrence.reason] += series.count - series.written
        self._series.clear()
        self._creates.clear()
        self._patches.clear()
        self._idle.clear()
        self.unsent = 0
        return dropped

    @property
    def waiting(self) -> int:
        """Series with a write to make."""
        return len(self._creates) + len(self._patches)

    # -- internals ---------------------------------------------------------------

    def _create(self, series: Series, wall_ns: int) -> Write:
        # Strictly increasing, so two Events of one owner never share a name.
        self._last_name = max(wall_ns, self._last_name + 1)
        name = event_name(series.occurrence.owner.name, self._last_name)
        series.in_flight = True
        body = event_body(
            series.occurrence,
            name=name,
            instance=self.instance,
            first_seen=series.first_seen,
            count=series.count,
            last_seen=series.last_seen,
        )
        return Write(series, "create", name, series.count, body)

    def _patch(self, series: Series) -> Write:
        if series.name is None:  # pragma: no cover - only created series wait for a patch
            raise RuntimeError("a series without an Event cannot be patched")
        series.in_flight = True
        body = {"series": series_of(series.count, series.last_seen)}
        return Write(series, "patch", series.name, series.count, body)

    def _file(self, series: Series) -> None:
        """Put a series where its next need puts it."""
        found = series.occurrence
        self._creates.pop(found, None)
        self._patches.pop(found, None)
        self._idle.pop(found, None)
        if series.name is None:
            self._creates[found] = None
        elif series.count > series.written:
            self._patches[found] = None
        else:
            self._idle[found] = None

    def _forget(self, found: Occurrence) -> None:
        del self._series[found]
        self._creates.pop(found, None)
        self._patches.pop(found, None)
        self._idle.pop(found, None)

    def _evict(self) -> bool:
        """Make room by forgetting the series idle longest; False when none is idle."""
        for found in self._idle:
            self._forget(found)
            return True
        return False
