"""When the serving certificate's expiry is warned about: the warning schedule alone, in-process."""

from __future__ import annotations

import datetime
import logging

import pytest

from webhook.service import expiry

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


DAY = datetime.timedelta(days=1)


def warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "webhook.certificates" and r.levelno == logging.WARNING
    ]


def test_no_warning_while_thirty_days_or_more_are_left(caplog: pytest.LogCaptureFixture) -> None:
    warnings = expiry.ExpiryWarnings()
    assert not warnings.check(T0 + 30 * DAY, T0)
    assert not warnings.check(T0 + 400 * DAY, T0)
    assert not warnings.check(None, T0)
    assert warned(caplog) == []


def test_under_thirty_days_the_warning_comes_once_a_day(caplog: pytest.LogCaptureFixture) -> None:
    warnings = expiry.ExpiryWarnings()
    not_after = T0 + 20 * DAY
    assert warnings.check(not_after, T0)
    assert not warnings.check(not_after, T0 + datetime.timedelta(hours=1))
    assert not warnings.check(not_after, T0 + DAY - datetime.timedelta(seconds=1))
    assert warnings.check(not_after, T0 + DAY)
    lines = warned(caplog)
    assert len(lines) == 2
    assert "expires in 20.0 days (on 2030-01-21 00:00 UTC)" in lines[0]
    assert "expires in 19.0 days" in lines[1]


def test_a_renewed_but_still_short_certificate_is_reported_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    warnings = expiry.ExpiryWarnings()
    assert warnings.check(T0 + 5 * DAY, T0)
    assert warnings.check(T0 + 12 * DAY, T0 + datetime.timedelta(minutes=5))
    assert len(warned(caplog)) == 2


def test_an_expired_certificate_is_said_to_be_expired(caplog: pytest.LogCaptureFixture) -> None:
    warnings = expiry.ExpiryWarnings()
    assert warnings.check(T0 - DAY, T0)
    (line,) = warned(caplog)
    assert "expired on 2029-12-31 00:00 UTC" in line
    assert expiry.expired(T0 - DAY, T0)
    assert expiry.expired(T0, T0)
    assert not expiry.expired(T0 + DAY, T0)
    assert not expiry.expired(None, T0)
