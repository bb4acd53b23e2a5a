"""A token bucket: how often the injector may write Events, with room for a burst."""

from __future__ import annotations

import math


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full.

    Not thread-safe: the one sender thread owns it. Times are the caller's
    monotonic seconds, so tests drive it with a fake clock.
    """

    def __init__(self, *, rate: float, burst: int, now: float) -> None:
        if not (math.isfinite(rate) and rate > 0) or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 when one was taken, else the seconds until one is there."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def available(self, now: float) -> float:
        """Tokens saved up at ``now`` (fractions included)."""
        self._refill(now)
        return self._tokens

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
            self._at = now
