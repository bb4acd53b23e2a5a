"""The namespace cache's logger, and the throttle that keeps an outage to a few lines.

A watch that fails every half second, or a cluster full of namespaces too
large to cache, would otherwise write a line per attempt or per namespace.
Each kind of warning is logged at most once per interval; the rest go to the
debug level, so nothing is lost to someone who asks for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("webhook.namespaces")


class ThrottledLog:
    """At most one warning per kind per ``interval`` seconds of ``clock``; the rest at debug."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}

    def allow(self, kind: str) -> bool:
        """Whether a line of ``kind`` may be logged now (and if so, remember that it was)."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            return False
        self._last[kind] = now
        return True

    def warn(
        self, kind: str, message: str, *args: object, exc_info: BaseException | None = None
    ) -> None:
        """A warning if ``kind`` may speak now, else the same line at debug level."""
        level = logging.WARNING if self.allow(kind) else logging.DEBUG
        log.log(level, message, *args, exc_info=exc_info)
