"""The serving certificate's expiry, made visible before it becomes an outage.

A webhook certificate made at install time expires a year later, when nobody
remembers it; with ``failurePolicy: Fail`` every meshed pod creation then
fails. So the server says so in three places (docs/operations.md):

- ``/metrics``: ``sidecar_injector_certificate_expiry_timestamp_seconds``, the
  ``notAfter`` of the certificate new handshakes get (alert on
  ``... - time() < 14 * 86400``);
- the log: one WARNING when fewer than 30 days are left, repeated once a day
  (not per handshake or scrape) until a renewed certificate is loaded;
- ``/readyz`` fails once it has expired: the API server refuses the
  handshake anyway, and a NotReady replica is what monitoring already sees.

Pure except for the log line: the caller passes the time and the
certificate's ``notAfter``; ``watch`` runs the daily check in the app's event
loop.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Final

import anyio

log = logging.getLogger("webhook.certificates")

WARN_DAYS: Final = 30
WARN_EVERY: Final = datetime.timedelta(days=1)
# How often the watch looks. A look is two datetime comparisons (no I/O; the
# certificate's notAfter is read when it is loaded), so it can be frequent
# enough that a reloaded certificate that is short-lived or expired already
# is reported within seconds rather than at the next hourly tick.
CHECK_EVERY_SECONDS: Final = 5.0


def utcnow() -> datetime.datetime:
    """The current time in UTC (certificate times are in UTC)."""
    return datetime.datetime.now(datetime.UTC)


def expired(not_after: datetime.datetime | None, now: datetime.datetime) -> bool:
    """Whether a certificate valid until ``not_after`` has expired at ``now``."""
    return not_after is not None and not_after <= now


class ExpiryWarnings:
    """Logs the 30-day warning at most once a day per certificate.

    A renewed certificate (another ``notAfter``) starts afresh, so a renewal
    that is still short-lived is reported at once, not up to a day later.
    """

    def __init__(
        self, *, warn_days: int = WARN_DAYS, every: datetime.timedelta = WARN_EVERY
    ) -> None:
        self._warn_within = datetime.timedelta(days=warn_days)
        self._every = every
        self._last: tuple[datetime.datetime, datetime.datetime] | None = None  # (notAfter, when)

    def check(self, not_after: datetime.datetime | None, now: datetime.datetime) -> bool:
        """Log a WARNING if due for this certificate at ``now``; True when it did."""
        if not_after is None or not_after - now >= self._warn_within:
            return False
        if self._last is not None:
            last_not_after, when = self._last
            if last_not_after == not_after and now - when < self._every:
                return False
        self._last = (not_after, now)
        left = not_after - now
        if left <= datetime.timedelta(0):
            log.warning(
                "the serving certificate expired on %s UTC: the API server refuses every call;"
                " renew it (docs/operations.md, certificate rotation)",
                f"{not_after:%Y-%m-%d %H:%M}",
            )
        else:
            log.warning(
                "the serving certificate expires in %.1f days (on %s UTC); renew it before"
                " then (docs/operations.md, certificate rotation)",
                left.total_seconds() / 86400.0,
                f"{not_after:%Y-%m-%d %H:%M}",
            )
        return True


async def watch(
    not_after: Callable[[], datetime.datetime | None],
    *,
    warnings: ExpiryWarnings | None = None,
    interval: float = CHECK_EVERY_SECONDS,
    now: Callable[[], datetime.datetime] = utcnow,
) -> None:
    """Check ``not_after()`` now and every ``interval`` seconds until cancelled."""
    warnings = warnings if warnings is not None else ExpiryWarnings()
    while True:
        try:
            warnings.check(not_after(), now())
        except Exception:  # a bug here must not take the server down with it
            log.exception("certificate expiry check failed")
        await anyio.sleep(interval)
