"""Giving back what closed connections leave behind: cyclic garbage, then free heap pages.

Two things kept memory after connections closed, so that churn (or a crowd
of connections that had come and gone) left the process tens of MB larger,
for good (docs/service.md, "Fairness between clients", has the figures):

- **Reference cycles.** A connection whose TLS handshake fails (a client that
  connects and leaves, or does not speak TLS) ends in an exception that
  asyncio's accept path keeps in a cycle with the objects of the connection
  (its protocol, transport, TLS state and 32 KiB read buffer); CPython
  fixed that in later patch releases, not in every 3.11 this may run on.
  Such a cycle is freed only by a collection of the oldest
  generation its objects reached, and a connection lives long enough to
  reach it; ``serve`` makes full collections rare on purpose
  (``webhook.service.server.GC_THRESHOLDS``), so they piled up.
- **Free heap pages.** TLS connections allocate with C ``malloc`` (OpenSSL's
  state and buffers, asyncio's read buffer), and glibc's allocator returns
  freed memory to the system only from the top of its heap: blocks freed
  between longer-lived ones stay in the process as free space, counted in
  its resident memory. ``malloc_trim(0)`` hands every whole free page of
  every arena back (``madvise``).

:class:`HeapTrimmer` does both, a full collection then the trim, from the
server's once-every-100-ms tick: once enough connections have closed since
the last time, and otherwise after a quiet spell for the few that closed
since. Both hold the event loop while they run: the collection walks what
is alive outside the frozen start-up heap (so it costs more while many
connections are open), the trim what was freed. So trims are spaced at
least a second apart, and further when they take longer, keeping them to
a small share of the loop's time under steady churn; a server whose clients
keep their connections, as kube-apiserver does, trims now and then. Where
``malloc_trim`` does not exist (a C library other than glibc, such as musl)
only the collection runs.
"""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Callable
from typing import Final

# Connections closed since the last trim before another is worth its time.
TRIM_AFTER_CLOSED: Final = 64
# The least time between two trims, and how many times its own duration a
# trim waits before the next (at most 2% of the event loop's time).
TRIM_INTERVAL_SECONDS: Final = 1.0
TRIM_SPACING: Final = 50.0
# Fewer closed connections are trimmed after this long, so that the last of
# a burst is not left behind until the next one.
QUIET_TRIM_SECONDS: Final = 10.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


# glibc's malloc_trim, or None under another C library.
MALLOC_TRIM: Final = _load_malloc_trim()


class HeapTrimmer:
    """Collects garbage and trims the C heap once connections have closed.

    ``closed`` returns how many connections have closed so far (a running
    count). A trim follows ``interval`` seconds of ``clock`` after the last
    one (or :data:`TRIM_SPACING` times the last one's duration, if longer)
    once ``every`` connections have closed since, or ``quiet`` seconds after
    it for fewer. ``on_trim`` is called after each (for counting);
    ``collect`` is the full garbage collection and ``trim`` glibc's
    ``malloc_trim`` (None: no trim, only the collection).
    """

    def __init__(
        self,
        closed: Callable[[], int],
        *,
        every: int = TRIM_AFTER_CLOSED,
        interval: float = TRIM_INTERVAL_SECONDS,
        quiet: float = QUIET_TRIM_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        on_trim: Callable[[], None] = lambda: None,
        collect: Callable[[], int] = gc.collect,
        trim: Callable[[int], int] | None = MALLOC_TRIM,
    ) -> None:
        self._closed = closed
        self._every = every
        self._interval = interval
        self._quiet = quiet
        self._clock = clock
        self._collect = collect
        self._on_trim = on_trim
        self._trim = trim
        self._closed_at_last = closed()
        self._last = float("-inf")
        self._spacing = interval
        self.trims = 0

    def maybe_trim(self) -> bool:
        """Collect and trim if enough connections closed, and time passed, since the last time."""
        closed = self._closed() - self._closed_at_last
        if closed <= 0:
            return False
        wait = self._spacing if closed >= self._every else max(self._spacing, self._quiet)
        now = self._clock()
        if now - self._last < wait:
            return False
        self._closed_at_last += closed
        self._collect()
        if self._trim is not None:
            self._trim(0)
        self._last = self._clock()
        self._spacing = max(self._interval, TRIM_SPACING * (self._last - now))
        self.trims += 1
        self._on_trim()
        return True
